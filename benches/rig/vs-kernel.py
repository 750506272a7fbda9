#!/usr/bin/env python3
"""overlayd vs Linux kernel vxlan, side by side in one run.

Builds 2-node clusters in network namespaces with deploy/local/cluster.sh: one where both nodes
run kernel vxlan programmed as flanneld does, and one per overlayd variant (default: one, with
--queues). Pods of every cluster are wired the same way (overlayd-cni, so the same pod MTU and
TSO limits; --pod-gso overrides them on all clusters alike). Then, for each round, measures every
cluster in turn (interleaved, the order rotating each round, so machine drift hits all of them)
and reports the median, the range (min-max over the rounds) and the ratio overlayd / kernel:

  tcp1_gbps            single-stream TCP (iperf3)                             higher is better
  tcp4_gbps            4-stream TCP (iperf3 -P 4)                             higher is better
  udp64_kpps           64-byte UDP packets delivered per s                    higher is better
  rtt_p50_us           ping RTT median                                        lower is better
  rtt_p99_us           ping RTT 99th percentile                               lower is better
  cpu_s_per_gb         CPU seconds of the whole machine (/proc/stat) per GB   lower is better
                       moved in the tcp1 test (other load on the machine counts too)
  cpu_daemon_s_per_gb  CPU seconds of the overlayd processes per GB (tcp1);   lower is better
                       kernel: none (its work runs in softirq, in cpu_s_per_gb)
  retrans1_per_gb      TCP retransmitted segments per GB, tcp1 (iperf3)       lower is better
  retrans4_per_gb      the same for tcp4                                      lower is better
  cs_daemon_per_gb     context switches of the overlayd threads per GB        lower is better
                       (tcp1; /proc/<pid>/task/*/status voluntary+nonvoluntary); kernel: none
  cs_softirqd_per_gb   context switches of all ksoftirqd/N threads per GB     lower is better
                       (tcp1): where the kernel defers packet work it cannot finish inline
  cs_system_per_gb     context switches of the whole machine per GB (tcp1,    lower is better
                       /proc/stat ctxt): includes iperf3 and any other load on the machine
  syscalls_per_gb      system calls of the overlayd processes per GB, counted lower is better
                       with `perf stat -e raw_syscalls:sys_enter` in a SEPARATE single-stream
                       run (the tracepoint costs throughput, so the runs above go without it);
                       kernel: none (no daemon). Needs perf; null without it.
With --ipv6 every cluster is dual-stack (cluster.sh DUALSTACK=1: IPv6 underlay, EnableIPv6, the
kernel nodes get Flannel's flannel-v6.1) and two more metrics are measured between the same pods
over IPv6 (inner IPv6 over an outer IPv6 underlay on both sides):
  tcp1_v6_gbps         single-stream TCP over IPv6 (iperf3 -6)                higher is better
  rtt6_p50_us          IPv6 ping RTT median                                   lower is better

Usage (root): benches/rig/vs-kernel.py [--rounds 5] [--seconds 4] [--out DIR] [--overlayd BIN]
              [--queues N] [--variant LABEL=ARGS ...] [--pod-gso cni|off|pod:N|both:N] [--ipv6]
  --variant  an overlayd cluster started with extra ARGS (e.g. 'bp50=--busy-poll-us 50');
             repeatable; replaces the default single variant "overlayd" (--queues N).
  --variant-bin LABEL=PATH  that variant runs another overlayd binary (a feature build).
  --pod-gso  cni: pods as overlayd-cni wires them (default); off: gso_max_size 65536 on both
             ends of every pod veth (the kernel default); pod:N: N on the pod end only;
             both:N: N on both ends. Applies to the kernel cluster too.
Writes DIR/results.json and DIR/chart.svg, prints a table. Cleans up its namespaces.
The table's last column is the range over the rounds of overlayd / kernel within one round
(measured back to back, so the drift of a shared machine between rounds cancels).
  --report FILE  prints the tables of an earlier run's results.json again (no root needed).
"""
import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(ROOT, "deploy", "local", "cluster.sh")
# (key, label, higher is better)
METRICS = [
    ("tcp1_gbps", "single-stream TCP, Gbit/s", True),
    ("tcp4_gbps", "4-stream TCP, Gbit/s", True),
    ("udp64_kpps", "UDP 64 B delivered, kpps", True),
    ("rtt_p50_us", "RTT p50, us", False),
    ("rtt_p99_us", "RTT p99, us", False),
    ("cpu_s_per_gb", "CPU s per GB, machine (tcp1)", False),
    ("cpu_daemon_s_per_gb", "CPU s per GB, overlayd (tcp1)", False),
    ("retrans1_per_gb", "TCP retransmits per GB (tcp1)", False),
    ("retrans4_per_gb", "TCP retransmits per GB (tcp4)", False),
    ("cs_daemon_per_gb", "ctx switches per GB, overlayd", False),
    ("cs_softirqd_per_gb", "ctx switches per GB, ksoftirqd", False),
    ("cs_system_per_gb", "ctx switches per GB, machine", False),
    ("syscalls_per_gb", "syscalls per GB, overlayd", False),
]
# Measured only with --ipv6 (appended to METRICS then).
METRICS_V6 = [
    ("tcp1_v6_gbps", "IPv6 single-stream TCP, Gbit/s", True),
    ("rtt6_p50_us", "IPv6 RTT p50, us", False),
]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def sh(*args, check=True, capture=True, timeout=120):
    r = subprocess.run(args, check=False, capture_output=capture, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stdout}{r.stderr}")
    return r.stdout


def nsx(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


def cpu_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v) - idle) / CLK_TCK


def system_ctxt():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("ctxt "):
                return int(line.split()[1])
    return 0


def thread_ctxt(pid):
    """Voluntary + involuntary context switches of every thread of pid (0 if it is gone)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def ksoftirqd_pids():
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        out.append(int(p))
            except OSError:
                pass
    return out


def proc_cpu(pid):
    """utime + stime of a process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / CLK_TCK
    except OSError:
        return 0.0


class Cluster:
    def __init__(self, prefix, label, kind, workdir, overlayd, args, pod_gso):
        self.p, self.label, self.kind = prefix, label, kind
        self.dir = os.path.join(workdir, prefix)
        self.procs = []
        self.gso_seen = None
        try:
            self._build(overlayd, args, pod_gso)
        except BaseException:
            # A cluster that fails half-way is not in the caller's list: clean it up here.
            self.close()
            raise

    def _build(self, overlayd, args, pod_gso):
        prefix, kind = self.p, self.kind
        sh("bash", CLUSTER, "down", prefix)
        sh("bash", CLUSTER, "up", prefix, self.dir, "2", "1")
        self.ipv6 = os.environ.get("DUALSTACK") == "1"
        if kind == "kernel":
            for i in (1, 2):
                os.environ["KERNEL_NODES"] = "1 2"
                sh("bash", CLUSTER, "kernel-node", prefix, str(i), "2", self.dir)
        else:
            for i in (1, 2):
                log = open(os.path.join(self.dir, f"overlayd{i}.log"), "w")
                # `ip netns exec` execs overlayd in place: the Popen pid is overlayd's.
                self.procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", f"{prefix}n{i}", overlayd, "--node-name", f"node{i}",
                     "--nodes-file", os.path.join(self.dir, "nodes.yaml"),
                     "--net-config-path", os.path.join(self.dir, "net-conf.json"),
                     "--subnet-file", os.path.join(self.dir, f"subnet{i}.env"),
                     *args],
                    stdout=subprocess.DEVNULL, stderr=log))
            for i in (1, 2):
                path = os.path.join(self.dir, f"overlayd{i}.log")
                for _ in range(100):
                    if "overlayd ready" in open(path).read():
                        break
                    if self.procs[i - 1].poll() is not None:
                        raise RuntimeError(f"overlayd {i} exited:\n" + open(path).read())
                    time.sleep(0.1)
                else:
                    raise RuntimeError(f"overlayd {i} not ready:\n" + open(path).read())
        for i in (1, 2):
            sh("bash", CLUSTER, "wire", prefix, self.dir, str(i), "1")
        self.src, self.dst, self.dst_ip = f"{prefix}p1-1", f"{prefix}p2-1", "10.244.2.2"
        # cluster.sh DUALSTACK=1: pod j of node i is also fd00:10:244:i::(j+1).
        self.dst_ip6 = "fd00:10:244:2::2"
        self._pod_gso(pod_gso)
        for ip in [self.dst_ip] + ([self.dst_ip6] if self.ipv6 else []):
            for _ in range(30):
                if subprocess.run(["ip", "netns", "exec", self.src, "ping", "-c1", "-W1", ip],
                                  capture_output=True).returncode == 0:
                    break
            else:
                raise RuntimeError(f"{kind}: pods cannot reach each other at {ip}")

    def _pod_gso(self, mode):
        """Overrides the TSO limit of every pod veth (both clusters alike), then records it."""
        if mode != "cni":
            ends, size = ("both", 65536) if mode == "off" else mode.split(":")
            for i in (1, 2):
                pod, node = f"{self.p}p{i}-1", f"{self.p}n{i}"
                sh("ip", "-n", pod, "link", "set", "eth0", "gso_max_size", str(size))
                if ends == "both":
                    for line in sh("ip", "-n", node, "-o", "link", "show", "master", "cni0").splitlines():
                        host = line.split(":")[1].strip().split("@")[0]
                        sh("ip", "-n", node, "link", "set", host, "gso_max_size", str(size))
        seen = {}
        for i in (1, 2):
            pod, node = f"{self.p}p{i}-1", f"{self.p}n{i}"
            m = re.search(r"gso_max_size (\d+)", sh("ip", "-n", pod, "-d", "link", "show", "eth0"))
            seen[f"pod{i}"] = int(m.group(1)) if m else None
            m = re.search(r"gso_max_size (\d+)", sh("ip", "-n", node, "-d", "link", "show", "master", "cni0"))
            seen[f"host{i}"] = int(m.group(1)) if m else None
        self.gso_seen = seen

    def pids(self):
        return [p.pid for p in self.procs if p.poll() is None]

    def iperf(self, seconds, *extra, dst=None):
        """One iperf3 test (to the IPv4 pod address unless `dst`); retried (twice) when iperf3
        reports an error, e.g. the one-shot server of the previous test still holding the port
        on a loaded machine."""
        for attempt in range(3):
            nsx(self.dst, "iperf3", "-s", "-1", "-D", "-p", "5201", check=False)
            time.sleep(0.2 + attempt)
            out = nsx(self.src, "timeout", str(seconds + 20), "iperf3", "-c", dst or self.dst_ip, "-p", "5201",
                      "-t", str(seconds), "-J", *extra, check=False, timeout=seconds + 30)
            try:
                j = json.loads(out)
            except json.JSONDecodeError:
                j = {"error": out[:200]}
            if "error" not in j and ("sum" in j.get("end", {}) or "sum_received" in j.get("end", {})):
                return j
            print(f"{self.label}: iperf3 {' '.join(extra)} failed ({j.get('error')}), retrying",
                  file=sys.stderr, flush=True)
        raise RuntimeError(f"{self.label}: iperf3 {' '.join(extra)} failed 3 times: {j.get('error')}")

    def measure(self, seconds, syscall_seconds):
        m = {}
        pids, soft = self.pids(), ksoftirqd_pids()
        c0, s0, x0 = cpu_busy(), system_ctxt(), sum(thread_ctxt(p) for p in soft)
        d0 = [(thread_ctxt(p), proc_cpu(p)) for p in pids]
        j = self.iperf(seconds)
        c1, s1, x1 = cpu_busy(), system_ctxt(), sum(thread_ctxt(p) for p in soft)
        d1 = [(thread_ctxt(p), proc_cpu(p)) for p in pids]
        recv = j["end"]["sum_received"]
        gb = max(recv["bytes"] / 1e9, 1e-9)
        m["tcp1_gbps"] = recv["bits_per_second"] / 1e9
        m["cpu_s_per_gb"] = (c1 - c0) / gb
        m["cs_system_per_gb"] = (s1 - s0) / gb
        m["cs_softirqd_per_gb"] = (x1 - x0) / gb
        if self.kind == "kernel":
            m["cpu_daemon_s_per_gb"] = m["cs_daemon_per_gb"] = None
        else:
            m["cpu_daemon_s_per_gb"] = sum(b[1] - a[1] for a, b in zip(d0, d1)) / gb
            m["cs_daemon_per_gb"] = sum(b[0] - a[0] for a, b in zip(d0, d1)) / gb
        sent = j["end"]["sum_sent"]
        m["retrans1_per_gb"] = sent.get("retransmits", 0) / max(sent["bytes"] / 1e9, 1e-9)
        j = self.iperf(seconds, "-P", "4")
        m["tcp4_gbps"] = j["end"]["sum_received"]["bits_per_second"] / 1e9
        sent = j["end"]["sum_sent"]
        m["retrans4_per_gb"] = sent.get("retransmits", 0) / max(sent["bytes"] / 1e9, 1e-9)
        j = self.iperf(seconds, "-u", "-b", "0", "-l", "64")
        s = j["end"]["sum"]
        m["udp64_kpps"] = (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3
        rtts = self.rtts(self.dst_ip)
        m["rtt_p50_us"] = rtts[len(rtts) // 2]
        m["rtt_p99_us"] = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
        m["syscalls_per_gb"] = self.syscalls_per_gb(syscall_seconds)
        if self.ipv6:
            j = self.iperf(seconds, dst=self.dst_ip6)
            m["tcp1_v6_gbps"] = j["end"]["sum_received"]["bits_per_second"] / 1e9
            rtts = self.rtts(self.dst_ip6)
            m["rtt6_p50_us"] = rtts[len(rtts) // 2]
        return m

    def rtts(self, ip):
        """300 pings 2 ms apart, RTTs in us, sorted."""
        out = nsx(self.src, "ping", "-c", "300", "-i", "0.002", "-n", ip, timeout=60)
        return sorted(float(l.split("time=")[1].split()[0]) * 1000 for l in out.splitlines() if "time=" in l)

    def syscalls_per_gb(self, seconds):
        """System calls of the overlayd processes per GB over a separate tcp1 run, by perf."""
        pids = self.pids()
        if self.kind == "kernel" or not pids or not shutil.which("perf") or seconds <= 0:
            return None
        perf = subprocess.Popen(
            ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", ",".join(map(str, pids)),
             "--", "sleep", str(seconds + 1.5)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        j = self.iperf(seconds)
        err = perf.communicate(timeout=seconds + 30)[1]
        for line in err.splitlines():
            f = line.split(",")
            if len(f) > 2 and f[2].startswith("raw_syscalls:sys_enter") and f[0].isdigit():
                return int(f[0]) / max(j["end"]["sum_received"]["bytes"] / 1e9, 1e-9)
        print(f"perf stat gave no count for {self.label}: {err.strip()}", file=sys.stderr)
        return None

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        sh("bash", CLUSTER, "down", self.p, check=False)


def svg_chart(rows, path, title):
    """rows: (label, ratio overlayd/kernel, higher is better). Bars show the ratio as the table
    does; green where overlayd does at least as well as the kernel in the metric's own sense."""
    w, rowh, left = 760, 30, 330
    h = 70 + rowh * len(rows)
    finite = [r for _, r, _ in rows if r is not None]
    scale = (w - left - 60) / max(2.0, max(finite, default=1.0) * 1.1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">',
             f'<text x="10" y="22" font-size="15" font-weight="bold">{title}</text>',
             '<text x="10" y="42" font-size="12">ratio overlayd / kernel vxlan, same run, median of rounds; '
             '1.0 = parity; (H) higher is better, (L) lower is better; green = at least as good as kernel</text>']
    x1 = left + scale * 1.0
    for i, (label, r, higher) in enumerate(rows):
        y = 54 + i * rowh
        parts.append(f'<text x="10" y="{y + 17}">{label} ({"H" if higher else "L"})</text>')
        if r is None:
            parts.append(f'<text x="{left + 4}" y="{y + 17}">n/a (kernel has no daemon, or 0)</text>')
            continue
        good = r >= 1.0 if higher else r <= 1.0
        color = "#2a9d8f" if good else "#e76f51"
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{max(1, scale * r):.1f}" height="18" fill="{color}"/>')
        parts.append(f'<text x="{left + scale * r + 6:.1f}" y="{y + 17}">{r:.2f}x</text>')
    parts.append(f'<line x1="{x1:.1f}" y1="50" x2="{x1:.1f}" y2="{h - 10}" stroke="#333" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def summarize(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None, None
    return statistics.median(v), min(v), max(v)


def fmt(x):
    if x is None:
        return "-"
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.2f}"


def round_ratio_range(kernel_runs, runs, n):
    """[min, max] over the rounds of overlayd / kernel within one round (the two measured
    back to back, so drift of the shared machine between rounds cancels); None without data."""
    r = [o[n] / k[n] for k, o in zip(kernel_runs, runs)
         if k.get(n) and o.get(n) is not None]
    return [min(r), max(r)] if r else None


def print_table(label, stats, ratios, ratio_ranges):
    print(f"\n{'metric':32s} {'kernel':>24s} {label:>24s} {label + '/kernel':>14s} {'per round':>13s}")
    for n, name, _ in METRICS:
        def cell(x):
            m, lo, hi = stats[x][n]
            return "-" if m is None else f"{fmt(m)} [{fmt(lo)}-{fmt(hi)}]"
        r, rr = ratios[n], ratio_ranges.get(n)
        per_round = f"{fmt(rr[0])}-{fmt(rr[1])}" if rr else "n/a"
        print(f"{name:32s} {cell('kernel'):>24s} {cell(label):>24s} "
              f"{fmt(r) if r is not None else 'n/a':>14s} {per_round:>13s}")


def report(path):
    """Prints the tables of an earlier run from its results.json (--report)."""
    with open(path) as f:
        res = json.load(f)
    runs = res["runs"]
    if res.get("ipv6"):
        METRICS.extend(METRICS_V6)
    print(f"{res['rounds']} interleaved rounds of {res['seconds']} s, {res['date']}, "
          f"kernel {res['kernel']}, {res['cpus']} CPUs; median [min-max]; pod gso: {res['pod_gso']}")
    for l in res["variants"]:
        stats = {x: {n: (res["median"][x][n], *res["range"][x][n]) for n, _, _ in METRICS}
                 for x in ("kernel", l)}
        ranges = {n: round_ratio_range(runs["kernel"], runs[l], n) for n, _, _ in METRICS}
        print_table(l, stats, res["ratios"][l], ranges)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--syscall-seconds", type=int, default=2,
                    help="length of the separate run syscalls are counted in (0 = skip)")
    ap.add_argument("--queues", type=int, default=None,
                    help="--queues of the default overlayd variant (default: overlayd's own)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=ARGS")
    ap.add_argument("--variant-bin", action="append", default=[], metavar="LABEL=PATH",
                    help="run variant LABEL with this overlayd binary instead of --overlayd "
                         "(e.g. one built with --features io-uring); overlayd-cni stays --overlayd's")
    ap.add_argument("--pod-gso", default="cni")
    ap.add_argument("--ipv6", action="store_true",
                    help="dual-stack clusters; also measure IPv6 pod-to-pod TCP and RTT")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results"))
    ap.add_argument("--overlayd", default=os.path.join(ROOT, "target", "release", "overlayd"))
    ap.add_argument("--report", metavar="RESULTS_JSON",
                    help="print the tables of an earlier run's results.json and exit")
    a = ap.parse_args()
    if a.report:
        report(a.report)
        return
    if os.geteuid() != 0:
        sys.exit("vs-kernel.py: run as root (network namespaces)")
    for tool in ("iperf3", "ping", "ip", "bridge"):
        if not shutil.which(tool):
            sys.exit(f"vs-kernel.py: {tool} is missing: run deploy/local/install-deps.sh")
    if not re.fullmatch(r"cni|off|(pod|both):\d+", a.pod_gso):
        sys.exit(f"vs-kernel.py: --pod-gso {a.pod_gso!r}: expected cni, off, pod:N or both:N")
    if not shutil.which("perf"):
        print("perf is missing: syscalls_per_gb stays empty (apt-get install linux-perf)", file=sys.stderr)
    cni = os.path.join(os.path.dirname(a.overlayd), "overlayd-cni")
    if not os.access(a.overlayd, os.X_OK) or not os.access(cni, os.X_OK):
        sys.exit(f"vs-kernel.py: {a.overlayd} or {cni} not built: cargo build --release -p overlayd -p cni-shim")
    os.environ["OVERLAYD_CNI"] = cni
    if a.ipv6:
        os.environ["DUALSTACK"] = "1"
        METRICS.extend(METRICS_V6)
    variants = []
    for v in a.variant:
        label, _, args = v.partition("=")
        if not label or label == "kernel":
            sys.exit(f"vs-kernel.py: --variant {v!r}: expected LABEL=ARGS with a label other than kernel")
        variants.append((label, shlex.split(args)))
    if not variants:
        variants = [("overlayd", ["--queues", str(a.queues)] if a.queues else [])]
    binaries = {}
    for v in a.variant_bin:
        label, _, path = v.partition("=")
        if label not in dict(variants) or not os.access(path, os.X_OK):
            sys.exit(f"vs-kernel.py: --variant-bin {v!r}: expected LABEL=PATH with a --variant label "
                     "and an executable PATH")
        binaries[label] = path
    os.makedirs(a.out, exist_ok=True)
    work = f"/tmp/overlayd-rig-{os.getpid()}"
    tag = f"r{os.getpid() % 1000}"
    labels = ["kernel"] + [l for l, _ in variants]
    clusters = {}
    runs = {l: [] for l in labels}
    try:
        clusters["kernel"] = Cluster(tag + "k", "kernel", "kernel", work, a.overlayd, [], a.pod_gso)
        for n, (label, args) in enumerate(variants):
            clusters[label] = Cluster(f"{tag}o{n}", label, "overlayd", work, binaries.get(label, a.overlayd),
                                      args, a.pod_gso)
        for r in range(a.rounds):
            order = labels[r % len(labels):] + labels[:r % len(labels)]
            if r % 2:
                order.reverse()
            for k in order:
                m = clusters[k].measure(a.seconds, a.syscall_seconds)
                runs[k].append(m)
                print(f"round {r + 1} {k:10s} " + " ".join(f"{n}={fmt(m[n])}" for n, _, _ in METRICS), flush=True)
        gso_seen = {l: c.gso_seen for l, c in clusters.items()}
    finally:
        for c in clusters.values():
            c.close()
        shutil.rmtree(work, ignore_errors=True)
    stats = {l: {n: summarize([x[n] for x in runs[l]]) for n, _, _ in METRICS} for l in labels}
    med = {l: {n: stats[l][n][0] for n, _, _ in METRICS} for l in labels}
    ranges = {l: {n: [stats[l][n][1], stats[l][n][2]] for n, _, _ in METRICS} for l in labels}
    ratios, ratio_ranges = {}, {}
    for l, _ in variants:
        ratios[l], ratio_ranges[l] = {}, {}
        for n, _, _ in METRICS:
            kv, ov = med["kernel"][n], med[l][n]
            ratios[l][n] = ov / kv if kv and ov is not None else None
            ratio_ranges[l][n] = round_ratio_range(runs["kernel"], runs[l], n)
    print(f"\n{a.rounds} interleaved rounds of {a.seconds} s; median [min-max]; pod gso: {a.pod_gso} {gso_seen['kernel']}")
    for l, _ in variants:
        print_table(l, stats, ratios[l], ratio_ranges[l])
    first = variants[0][0]
    result = {"rounds": a.rounds, "seconds": a.seconds, "syscall_seconds": a.syscall_seconds,
              "ipv6": a.ipv6,
              "queues": a.queues, "variants": {l: args for l, args in variants},
              "binaries": {l: binaries.get(l, a.overlayd) for l, _ in variants},
              "pod_gso": a.pod_gso, "pod_gso_seen": gso_seen,
              "median": med, "range": ranges,
              "ratio_overlayd_over_kernel": ratios[first], "ratios": ratios,
              "ratio_ranges": ratio_ranges,
              "higher_is_better": {n: h for n, _, h in METRICS},
              "runs": runs, "kernel": os.uname().release, "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    rows = []
    for l, _ in variants:
        for n, label, higher in METRICS:
            rows.append((label if len(variants) == 1 else f"{l}: {label}", ratios[l][n], higher))
    svg_chart(rows, os.path.join(a.out, "chart.svg"),
              f"overlayd / kernel vxlan ({a.rounds} interleaved rounds, {os.cpu_count()} vCPUs)")
    print(f"\nwrote {a.out}/results.json and {a.out}/chart.svg")


if __name__ == "__main__":
    main()
