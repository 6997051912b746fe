# Shared by deploy/unleash/up and deploy/unleash/down (sourced, not executed).
# Expects: $here (this directory), $state (the state dir, absolute) and say().

pidfile="$state/unleash.pid"
instance="$state/instance"   # "port=<port> db=<db>" of the server started from this state dir
logfile="$state/unleash.log"

# Is pid $1 the server.mjs of this checkout? (guards against a stale pidfile whose pid was reused)
ours() {
    [[ -n "${1:-}" && -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$here/server.mjs"
}

# Is pid $1 alive (not gone, not a zombie waiting to be reaped)?
alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ "${stat##*) }" != Z* ]]
}

# Stop pid $1: SIGTERM (unleash shuts down gracefully), SIGKILL after $2 seconds.
stop_server() {
    local pid="$1" bound="${2:-20}" waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while alive "$pid"; do
        if (( waited >= bound * 4 )); then
            say "pid $pid still running after ${bound}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.25
        waited=$((waited + 1))
    done
    while alive "$pid"; do sleep 0.1; done
}
