#!/usr/bin/env python3
"""Where the time per proxied request goes, counted (run by benches/syscalls.sh).

For each process under test (gatehouse's public route, gatehouse with a cached valid token, the
hyper pass-through, the hyper floor (benches/hyper_floor.rs), HAProxy plain and nginx plain, and
gatehouse's public route and HAProxy plain over TLS, all in front of the same upstream and pinned
to the same core as in benches/load.sh) a warm-up run, then a fixed number of requests (wrk stops
after --requests responses) while counting:

- system calls, in total and per call (`perf stat` on the syscall tracepoints of every thread of
  the process: counted in the kernel, so the process runs at its normal speed; strace -c slows it
  tenfold, which changes how many events each epoll_wait returns);
- context switches: perf's `context-switches` and the voluntary / nonvoluntary counts of every
  thread in /proc/PID/task/*/status, before and after;
- wakeups the process issued (`sched:sched_wakeup` in its context: its own threads, and the
  peers a loopback write wakes);
- CPU time (utime + stime) per request, which unlike the counts depends on what else runs.

Every figure is divided by the requests wrk completed. The counts depend a little on the load
(a process that falls behind gets more events per epoll_wait), which is why all cases use the same
closed loop: wrk 1 thread x --connections.

Standard library only; needs perf, wrk, haproxy and nginx on PATH (missing proxies are skipped).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (benches/load/run.py: instances, wrk, CPU ticks)

# The calls a proxy makes per request, and the ones whose count would show a lever at work.
SYSCALLS = ["read", "recvfrom", "readv", "recvmsg", "write", "writev", "sendto", "sendmsg",
            "epoll_wait", "epoll_pwait", "epoll_ctl", "futex", "sched_yield", "accept4",
            "close", "setsockopt", "getsockopt", "madvise", "mmap", "munmap", "io_uring_enter"]
COLUMNS = [("reads", ("read", "recvfrom", "readv", "recvmsg")),
           ("writes", ("write", "writev", "sendto", "sendmsg")),
           ("epoll_wait", ("epoll_wait", "epoll_pwait")),
           ("epoll_ctl", ("epoll_ctl",)),
           ("futex", ("futex",))]


def switches(pid):
    """Voluntary and nonvoluntary context switches summed over the threads alive now."""
    vol = nonvol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        nonvol += int(line.split()[1])
        except FileNotFoundError:
            pass
    return vol, nonvol


def user_sys(pid):
    """utime and stime of the process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def parse_perf(path):
    counts = {}
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) < 3 or not fields[0].replace(".", "").isdigit():
                continue
            counts[fields[2]] = float(fields[0])
    return counts


def count_case(runner, label, url, pid, env, requests):
    args = runner.args
    env = dict(env or {})
    run.run_wrk(url, args.gen_core, 2, args.connections, env)  # warm-up
    events = (["raw_syscalls:sys_enter", "context-switches", "cpu-migrations",
               "sched:sched_wakeup"] + [f"syscalls:sys_enter_{name}" for name in SYSCALLS])
    out = os.path.join(runner.work, f"perf-{pid}.csv")
    threads = len(os.listdir(f"/proc/{pid}/task"))
    vol0, nonvol0 = switches(pid)
    ticks0 = user_sys(pid)
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out, "-e", ",".join(events),
                             "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached to every thread
    stop_file = os.path.join(runner.work, f"stopped-{pid}")
    wrk = run.run_wrk(url, args.gen_core, 120, args.connections,
                      {**env, "LOAD_MAX_REQUESTS": str(requests), "LOAD_STOP_FILE": stop_file},
                      background=True)
    # wrk's thread stops after `requests` responses, but wrk waits out -d: stop it then.
    while not os.path.exists(stop_file) and wrk.poll() is None:
        time.sleep(0.01)
    wrk.send_signal(signal.SIGINT)
    r = run.wrk_result(wrk)
    os.unlink(stop_file)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=30)
    ticks1 = user_sys(pid)
    vol1, nonvol1 = switches(pid)
    counts = parse_perf(out)
    done = r["requests"]
    per = lambda n: n / done if done else float("nan")  # noqa: E731
    row = {"case": label, "requests": done, "threads": threads,
           "syscalls": per(counts.get("raw_syscalls:sys_enter", 0)),
           "by_call": {name: per(counts.get(f"syscalls:sys_enter_{name}", 0))
                       for name in SYSCALLS},
           "cs": per(counts.get("context-switches", 0)),
           "migrations": per(counts.get("cpu-migrations", 0)),
           "wakeups": per(counts.get("sched:sched_wakeup", 0)),
           "voluntary": per(vol1 - vol0), "nonvoluntary": per(nonvol1 - nonvol0),
           "cpu_us": per((sum(ticks1) - sum(ticks0)) / run.CLK_TCK * 1e6),
           "user_us": per((ticks1[0] - ticks0[0]) / run.CLK_TCK * 1e6),
           "non_2xx": r["status_errors"]}
    print(format_row(row), flush=True)
    return row


def format_row(row):
    calls = ", ".join(f"{k} {v:.2f}" for k, v in row["by_call"].items() if v >= 0.005)
    return (f"  {row['case']:<36} {row['requests']} requests: {row['syscalls']:.2f} syscalls/req "
            f"({calls}); switches {row['voluntary']:.2f} vol + {row['nonvoluntary']:.2f} nonvol "
            f"(perf {row['cs']:.2f}); wakeups {row['wakeups']:.2f}; {row['threads']} threads; "
            f"cpu {row['cpu_us']:.1f} us/req ({row['user_us']:.1f} user)")


def markdown(rows):
    head = ("| case | syscalls/req | " + " | ".join(c for c, _ in COLUMNS)
            + " | other | switches/req (vol + nonvol) | wakeups/req | CPU µs/req (user) |")
    lines = [head, "|" + "---|" * (len(COLUMNS) + 6)]
    for r in rows:
        cols = [sum(r["by_call"][n] for n in names) for _, names in COLUMNS]
        other = r["syscalls"] - sum(cols)
        lines.append(f"| {r['case']} | {r['syscalls']:.2f} | "
                     + " | ".join(f"{c:.2f}" for c in cols)
                     + f" | {other:.2f} | {r['voluntary'] + r['nonvoluntary']:.2f} "
                     f"({r['voluntary']:.2f} + {r['nonvoluntary']:.2f}) | {r['wakeups']:.2f} | "
                     f"{r['cpu_us']:.1f} ({r['user_us']:.1f}) |")
    return "\n".join(lines)


def tls_cases(runner, rows, upstream, requests):
    """Gatehouse's public route and HAProxy plain over TLS with keep-alive (wrk negotiates TLS
    1.3 with both), on one self-signed P-256 certificate."""
    work = runner.work
    cert, key, pem = (os.path.join(work, n) for n in ("tls-cert.pem", "tls-key.pem", "tls.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(pem, "w") as out:
        for part in (cert, key):
            with open(part) as f:
                out.write(f.read())
    gh = runner.gatehouse_instance("EdDSA", upstream, name="EdDSA-tls", tls=(cert, key))
    rows.append(count_case(runner, "gatehouse public route over TLS",
                           f"https://127.0.0.1:{gh['port']}/open/x", gh["proc"].pid, {},
                           requests))
    runner.stop_gatehouse(gh)
    if shutil.which("haproxy"):
        hp, hport = runner.haproxy_instance(None, upstream, None, tls_pem=pem)
        rows.append(count_case(runner, "HAProxy plain over TLS", f"https://127.0.0.1:{hport}/api/x",
                               hp.pid, {}, requests))
        runner.procs.stop(hp)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gatehouse", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--passthrough", required=True)
    p.add_argument("--floor", required=True, help="benches/hyper_floor.rs's binary")
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--gen-core", type=int, default=0)
    p.add_argument("--sut-core", type=int, default=1)
    p.add_argument("--only", default="",
                   help="comma list of cases to run: public, cached, passthrough, floor, haproxy, "
                        "nginx, tls (gatehouse's public route and HAProxy plain over TLS)")
    p.add_argument("--gatehouse-env", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    args.seconds = 2
    only = set(filter(None, args.only.split(","))) or {"public", "cached", "passthrough",
                                                       "floor", "haproxy", "nginx", "tls"}
    os.sched_setaffinity(0, {args.gen_core})
    procs = run.Processes()
    work = tempfile.mkdtemp(prefix="gatehouse-counts-")
    runner = run.Runner(args, procs, work)
    rows = []
    print(f"process under test on core {args.sut_core}, wrk + upstream on core {args.gen_core}; "
          f"{args.connections} connections, {args.requests} requests per case", flush=True)
    try:
        up_proc, upstream = runner.start_helper(
            "upstream", [args.upstream, "serve", "127.0.0.1:0", "1800"], args.gen_core)
        if only & {"public", "cached"}:
            gh = runner.gatehouse_instance("EdDSA", upstream)
            pid = gh["proc"].pid
            if "public" in only:
                rows.append(count_case(runner, "gatehouse public route",
                                       f"http://127.0.0.1:{gh['port']}/open/x", pid, {},
                                       args.requests))
            if "cached" in only:
                rows.append(count_case(runner, "gatehouse cached token (EdDSA)",
                                       f"http://127.0.0.1:{gh['port']}/api/x", pid,
                                       {"LOAD_TOKEN": gh["token"]}, args.requests))
            runner.stop_gatehouse(gh)
        # The two hyper proxies without auth: the same helper command line.
        for case, exe, label in [("passthrough", args.passthrough, "pass-through (hyper)"),
                                 ("floor", args.floor, "hyper floor (no pool, no auth)")]:
            if case in only:
                proc, addr = runner.start_helper(
                    case, [exe, "serve", "127.0.0.1:0", upstream, "600"], args.sut_core)
                rows.append(count_case(runner, label, f"http://{addr}/api/x", proc.pid, {},
                                       args.requests))
                procs.stop(proc)
        if "haproxy" in only and shutil.which("haproxy"):
            hp, hport = runner.haproxy_instance(None, upstream, None)
            rows.append(count_case(runner, "HAProxy plain", f"http://127.0.0.1:{hport}/api/x",
                                   hp.pid, {}, args.requests))
            procs.stop(hp)
        if "nginx" in only and shutil.which("nginx"):
            ng, nport = runner.nginx_instance(upstream)
            rows.append(count_case(runner, "nginx plain", f"http://127.0.0.1:{nport}/api/x",
                                   ng.pid, {}, args.requests))
            procs.stop(ng)
        if "tls" in only:
            tls_cases(runner, rows, upstream, args.requests)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
