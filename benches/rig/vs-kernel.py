#!/usr/bin/env python3
"""overlayd vs Linux kernel vxlan, side by side in one run.

Builds two 2-node clusters in network namespaces with deploy/local/cluster.sh: one where both
nodes run kernel vxlan programmed as flanneld does, one where both run overlayd. Then, for each
round, measures both (interleaved, so machine drift hits both) and reports the median per metric
and the ratio overlayd / kernel:

  tcp1_gbps    single-stream TCP (iperf3)            higher is better
  tcp4_gbps    4-stream TCP (iperf3 -P 4)            higher is better
  udp64_kpps   64-byte UDP packets delivered per s   higher is better
  rtt_p50_us   ping RTT median                       lower is better
  rtt_p99_us   ping RTT 99th percentile              lower is better
  cpu_s_per_gb CPU seconds (all cores, /proc/stat) per GB moved in the tcp1 test  lower is better

Usage (root): benches/rig/vs-kernel.py [--rounds 3] [--seconds 4] [--out DIR] [--overlayd BIN]
Writes DIR/results.json and DIR/chart.svg, prints a table. Cleans up its namespaces.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(ROOT, "deploy", "local", "cluster.sh")
METRICS = [
    ("tcp1_gbps", "single-stream TCP, Gbit/s", True),
    ("tcp4_gbps", "4-stream TCP, Gbit/s", True),
    ("udp64_kpps", "UDP 64 B delivered, kpps", True),
    ("rtt_p50_us", "RTT p50, us", False),
    ("rtt_p99_us", "RTT p99, us", False),
    ("cpu_s_per_gb", "CPU s per GB (tcp1)", False),
]


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
    return (sum(v) - idle) / os.sysconf("SC_CLK_TCK")


class Cluster:
    def __init__(self, prefix, kind, workdir, overlayd, queues):
        self.p, self.kind, self.dir = prefix, kind, os.path.join(workdir, prefix)
        self.procs = []
        try:
            self._build(overlayd, queues)
        except BaseException:
            # A cluster that fails half-way is not in the caller's list: clean it up here.
            self.close()
            raise

    def _build(self, overlayd, queues):
        prefix, kind = self.p, self.kind
        sh("bash", CLUSTER, "down", prefix)
        sh("bash", CLUSTER, "up", prefix, self.dir, "2", "1")
        if kind == "kernel":
            for i in (1, 2):
                os.environ["KERNEL_NODES"] = "1 2"
                sh("bash", CLUSTER, "kernel-node", prefix, str(i), "2", self.dir)
        else:
            for i in (1, 2):
                log = open(os.path.join(self.dir, f"overlayd{i}.log"), "w")
                self.procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", f"{prefix}n{i}", overlayd, "--node-name", f"node{i}",
                     "--nodes-file", os.path.join(self.dir, "nodes.yaml"),
                     "--net-config-path", os.path.join(self.dir, "net-conf.json"),
                     "--subnet-file", os.path.join(self.dir, f"subnet{i}.env"),
                     "--queues", str(queues)], stdout=subprocess.DEVNULL, stderr=log))
            for i in (1, 2):
                path = os.path.join(self.dir, f"overlayd{i}.log")
                for _ in range(100):
                    if "overlayd ready" in open(path).read():
                        break
                    time.sleep(0.1)
                else:
                    raise RuntimeError(f"overlayd {i} not ready:\n" + open(path).read())
        for i in (1, 2):
            sh("bash", CLUSTER, "wire", prefix, self.dir, str(i), "1")
        self.src, self.dst, self.dst_ip = f"{prefix}p1-1", f"{prefix}p2-1", "10.244.2.2"
        for _ in range(30):
            if subprocess.run(["ip", "netns", "exec", self.src, "ping", "-c1", "-W1", self.dst_ip],
                              capture_output=True).returncode == 0:
                return
        raise RuntimeError(f"{kind}: pods cannot reach each other")

    def iperf(self, seconds, *extra):
        nsx(self.dst, "iperf3", "-s", "-1", "-D", "-p", "5201")
        time.sleep(0.2)
        out = nsx(self.src, "timeout", str(seconds + 20), "iperf3", "-c", self.dst_ip, "-p", "5201",
                  "-t", str(seconds), "-J", *extra, check=False, timeout=seconds + 30)
        return json.loads(out)

    def measure(self, seconds):
        m = {}
        c0 = cpu_busy()
        j = self.iperf(seconds)
        c1 = cpu_busy()
        recv = j["end"]["sum_received"]
        m["tcp1_gbps"] = recv["bits_per_second"] / 1e9
        m["cpu_s_per_gb"] = (c1 - c0) / max(recv["bytes"] / 1e9, 1e-9)
        j = self.iperf(seconds, "-P", "4")
        m["tcp4_gbps"] = j["end"]["sum_received"]["bits_per_second"] / 1e9
        j = self.iperf(seconds, "-u", "-b", "0", "-l", "64")
        s = j["end"]["sum"]
        m["udp64_kpps"] = (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3
        out = nsx(self.src, "ping", "-c", "300", "-i", "0.002", "-q" if False else "-n", self.dst_ip, timeout=60)
        rtts = sorted(float(l.split("time=")[1].split()[0]) * 1000 for l in out.splitlines() if "time=" in l)
        m["rtt_p50_us"] = rtts[len(rtts) // 2]
        m["rtt_p99_us"] = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
        return m

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        sh("bash", CLUSTER, "down", self.p, check=False)


def svg_chart(ratios, path):
    w, rowh, left = 640, 34, 190
    h = 60 + rowh * len(ratios)
    scale = (w - left - 40) / max(2.0, max(r for _, r in ratios) * 1.1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">',
             f'<text x="10" y="22" font-size="15" font-weight="bold">overlayd / kernel vxlan (same run, median; 1.0 = parity, right is better)</text>']
    x1 = left + scale * 1.0
    for i, (label, r) in enumerate(ratios):
        y = 40 + i * rowh
        color = "#2a9d8f" if r >= 1.0 else "#e76f51"
        parts.append(f'<text x="10" y="{y + 17}">{label}</text>')
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{max(1, scale * r):.1f}" height="18" fill="{color}"/>')
        parts.append(f'<text x="{left + scale * r + 6:.1f}" y="{y + 17}">{r:.2f}x</text>')
    parts.append(f'<line x1="{x1:.1f}" y1="34" x2="{x1:.1f}" y2="{h - 10}" stroke="#333" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--queues", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results"))
    ap.add_argument("--overlayd", default=os.path.join(ROOT, "target", "release", "overlayd"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("vs-kernel.py: run as root (network namespaces)")
    for tool in ("iperf3", "ping", "ip", "bridge"):
        if not shutil.which(tool):
            sys.exit(f"vs-kernel.py: {tool} is missing: run deploy/local/install-deps.sh")
    cni = os.path.join(os.path.dirname(a.overlayd), "overlayd-cni")
    if not os.access(a.overlayd, os.X_OK) or not os.access(cni, os.X_OK):
        sys.exit(f"vs-kernel.py: {a.overlayd} or {cni} not built: cargo build --release -p overlayd -p cni-shim")
    os.environ["OVERLAYD_CNI"] = cni
    os.makedirs(a.out, exist_ok=True)
    work = f"/tmp/overlayd-rig-{os.getpid()}"
    tag = f"r{os.getpid() % 1000}"
    clusters = {}
    runs = {"kernel": [], "overlayd": []}
    try:
        clusters["kernel"] = Cluster(tag + "k", "kernel", work, a.overlayd, a.queues)
        clusters["overlayd"] = Cluster(tag + "o", "overlayd", work, a.overlayd, a.queues)
        for r in range(a.rounds):
            order = ["kernel", "overlayd"] if r % 2 == 0 else ["overlayd", "kernel"]
            for k in order:
                m = clusters[k].measure(a.seconds)
                runs[k].append(m)
                print(f"round {r + 1} {k:8s} " + " ".join(f"{n}={m[n]:.2f}" for n, _, _ in METRICS), flush=True)
    finally:
        for c in clusters.values():
            c.close()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: {n: statistics.median(x[n] for x in v) for n, _, _ in METRICS} for k, v in runs.items()}
    rows, ratios = [], []
    for n, label, higher in METRICS:
        kv, ov = med["kernel"][n], med["overlayd"][n]
        ratio = ov / kv if kv else float("nan")
        better = ratio if higher else (kv / ov if ov else float("nan"))
        rows.append((label, kv, ov, ratio))
        ratios.append((label, better))
    print()
    print(f"{'metric':28s} {'kernel':>10s} {'overlayd':>10s} {'overlayd/kernel':>16s}")
    for label, kv, ov, ratio in rows:
        print(f"{label:28s} {kv:10.2f} {ov:10.2f} {ratio:16.2f}")
    result = {"rounds": a.rounds, "seconds": a.seconds, "queues": a.queues, "median": med,
              "ratio_overlayd_over_kernel": {n: r[3] for (n, _, _), r in zip(METRICS, rows)},
              "runs": runs, "kernel": os.uname().release, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    svg_chart(ratios, os.path.join(a.out, "chart.svg"))
    print(f"\nwrote {a.out}/results.json and {a.out}/chart.svg")


if __name__ == "__main__":
    main()
