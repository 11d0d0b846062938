"""CPU per job of the queue: what ``benchmarks/queue.py`` spends per job, in its own processes and in
PostgreSQL, with the fixed costs (imports, process starts, set-up) taken out.

    python benchmarks/queue_cpu.py [--configs pg4] [--small 1000] [--large 4000] [--repeat 2]

Runs ``queue.py`` with ``--small`` and then ``--large`` jobs and divides the difference of the CPU
seconds by the difference of the job counts: the benchmark's processes from ``getrusage`` of its
children, PostgreSQL from ``/proc`` (every ``postgres`` process of this machine: utime, stime and
those of its reaped children, so the backends that came and went are counted; run it on a machine
whose PostgreSQL serves nothing else). On two cores, N jobs/s leaves 2000 / N ms of CPU per job
for everything: 4 ms at 500 jobs/s. Linux only.
"""

from __future__ import annotations

# Nothing here imports the standard library's queue, so queue.py beside it (first on sys.path when
# run as a script) shadows nothing: unlike queue.py and queue_floor.py, no sys.path repair.
import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

QUEUE = Path(__file__).resolve().parent / "queue.py"
TICKS = os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> float:
    """CPU seconds of every postgres process now (with the children each has reaped)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # ended meanwhile
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / TICKS


def run(jobs: int, configs: str, extra: list[str]) -> tuple[float, float, str]:
    """(benchmark CPU s, PostgreSQL CPU s, throughput column) of one ``queue.py`` run."""
    before, pg_before = resource.getrusage(resource.RUSAGE_CHILDREN), postgres_cpu_s()
    done = subprocess.run([sys.executable, str(QUEUE), "--jobs", str(jobs), "--latency-jobs", "3",
                           "--configs", configs, *extra], capture_output=True, text=True, check=True)
    time.sleep(1.0)  # the backends that served it exit and are reaped
    after, pg_after = resource.getrusage(resource.RUSAGE_CHILDREN), postgres_cpu_s()
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found = re.search(r"throughput, jobs/s\s+(\d+)", done.stdout)
    return own, pg_after - pg_before, found.group(1) if found else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="pg4", help="one of queue.py's set-ups (sqlite, pg1, pg4)")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=2)
    args, extra = parser.parse_known_args()
    if args.large <= args.small:
        parser.error("--large must be more than --small")
    print(f"$ python benchmarks/queue_cpu.py --configs {args.configs} (queue.py with {args.small} and "
          f"{args.large} jobs; load average at the start {os.getloadavg()[0]:.2f})")
    jobs = args.large - args.small
    for _ in range(args.repeat):
        small, large = run(args.small, args.configs, extra), run(args.large, args.configs, extra)
        own, pg = (large[0] - small[0]) * 1000 / jobs, (large[1] - small[1]) * 1000 / jobs
        print(f"  benchmark processes {own:.2f} ms/job, PostgreSQL {pg:.2f} ms/job, together {own + pg:.2f} "
              f"ms/job (throughput of the two runs: {small[2]}, {large[2]} jobs/s)", flush=True)


if __name__ == "__main__":
    main()
