"""`cbir doctor`: which backends work here."""

from __future__ import annotations

import argparse

from cbir.cli.common import print_json


def cmd_doctor(a: argparse.Namespace) -> int:
    from cbir import install
    from cbir.backend_checks import cpu_path_ok, run_checks

    wheels = install.check()  # a mixed install (CPU and GPU wheels of one module) is refused in one line
    results = run_checks()
    ok = cpu_path_ok(results)
    if a.json:
        print_json({"cpu_path_ok": ok, "wheels": wheels, "backends": results})
    else:
        print("wheels: " + ", ".join(f"{m} ← {' '.join(d) or 'not installed'}" for m, d in wheels.items()))
        for r in results:
            state = "available  " if r["available"] else "unavailable"
            print(f"{r['name']:22s} {state}  {r['check'] or r['reason']}")
        print("CPU path works." if ok else "The CPU path does NOT work: see above.")
    return 0 if ok else 1


def register(sub) -> None:
    d = sub.add_parser("doctor", help="which backends work here, with a self-check of each")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_doctor)
