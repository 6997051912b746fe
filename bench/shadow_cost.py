"""What the shadow adds to a batch, against the batch's own strategy work, in one run.

    .venv/bin/python bench/shadow_cost.py [--records 30] [--rounds 5]

For each batch shape, times (best of ``rounds``, timeit) the cohort's own strategy, and
the shadow's work: the other strategy plus the comparison. Prints the ratio
shadow / own strategy; docs/report.md quotes a run.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

from canaryws.core.compare import compare
from canaryws.core.strategies import LENIENT, STRICT, Strategy

SHAPES: dict[str, Callable[[int], list[Any]]] = {
    "clean": lambda n: [f"  record {i} " for i in range(n)],
    "10% bad": lambda n: [("" if i % 20 == 0 else "x\x01y" if i % 20 == 1 else f" r{i} ") for i in range(n)],
}


def best_us(stmt: Callable[[], object], number: int, rounds: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=rounds)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    print(f"{'batch':<10} {'cohort':<8} {'own µs':>8} {'shadow µs':>10} {'ratio':>6}")
    for shape, make in SHAPES.items():
        records = make(args.records)
        for own, other in ((STRICT, LENIENT), (LENIENT, STRICT)):
            primary = own.process(records, 4096)

            def shadow(other: Strategy = other, primary: Any = primary, records: list[Any] = records) -> object:
                return compare(primary, other.process(records, 4096))

            def own_work(own: Strategy = own, records: list[Any] = records) -> object:
                return own.process(records, 4096)

            own_us = best_us(own_work, args.number, args.rounds)
            shadow_us = best_us(shadow, args.number, args.rounds)
            print(f"{shape:<10} {own.name:<8} {own_us:8.2f} {shadow_us:10.2f} {shadow_us / own_us:6.2f}")


if __name__ == "__main__":
    main()
