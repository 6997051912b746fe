# Shared by deploy/unleash/up and deploy/unleash/down (sourced, not executed).
# Expects: $here (this directory), $state (the state dir, absolute) and say().

pidfile="$state/unleash.pid"
instance="$state/instance"   # "port=<port> db=<db>" of the server started from this state dir
logfile="$state/unleash.log"
databases="$state/database"  # the databases up created for this state dir, one a line
db_name_re='^[a-z_][a-z0-9_]{0,62}$'

# The database of the last server started from this state dir (empty if none is known).
instance_db() {
    [[ -r "$instance" ]] || return 0
    sed -n '1s/^port=[0-9]* db=\([a-z_][a-z0-9_]*\)$/\1/p' "$instance"
}

# The databases that up created for this state dir, one a line (malformed lines skipped).
recorded_databases() {
    local name
    [[ -r "$databases" ]] || return 0
    while IFS= read -r name || [[ -n "$name" ]]; do
        if [[ "$name" =~ $db_name_re ]]; then printf '%s\n' "$name"; fi
    done <"$databases"
    return 0
}

is_recorded() {  # name
    local name
    while IFS= read -r name; do
        [[ "$name" == "$1" ]] && return 0
    done < <(recorded_databases)
    return 1
}

# Rewrite the record (mode 0600) with the names given; no names removes it.
write_record() {
    if (( $# == 0 )); then
        rm -f "$databases"
        return
    fi
    printf '%s\n' "$@" >"$databases.tmp"
    chmod 600 "$databases.tmp"
    mv -f "$databases.tmp" "$databases"
}

# Record that database $1 was created for this state dir.
record_database() {
    is_recorded "$1" && return 0
    local names
    mapfile -t names < <(recorded_databases)
    write_record "${names[@]}" "$1"
}

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
