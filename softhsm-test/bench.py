"""The benchmark driver (run by bench.sh): uploads at several concurrency levels against a
running hsm-bridge and prints, per level, uploads/s, latency percentiles, the daemon's CPU per
upload and RSS, the emulator's CPU per upload and the KMS calls per upload by operation; then
the cold start time. A sample of each level's keys is proven to hold the source material, so a
broken upload cannot look fast. Also writes the numbers as JSON."""

import base64
import json
import os
import sys
import threading
import time

import boto3
import requests
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CLK = os.sysconf("SC_CLK_TCK")
IDLE_S = 10


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def ctx_switches(pid):
    """Context switches of all the daemon's threads (voluntary and not)."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        n += int(line.split()[1])
        except FileNotFoundError:
            pass
    return n


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def kms_calls(url, token):
    """hsm_bridge_kms_calls_total by operation, from the daemon's /metrics."""
    text = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("hsm_bridge_kms_calls_total{"):
            labels, value = line.rsplit(" ", 1)
            op = labels.split('operation="', 1)[1].split('"', 1)[0]
            out[op] = out.get(op, 0) + float(value)
    return out


def emulator_calls(path):
    """KMS calls by operation, as the emulator logged them (`AWS kms.CreateKey => 200`)."""
    counts = {}
    with open(path, errors="replace") as f:
        for line in f:
            i = line.find("AWS kms.")
            if i < 0:
                continue
            op = line[i + len("AWS kms."):].split(" ", 1)[0]
            counts[op] = counts.get(op, 0) + 1
    return counts


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def prove(kms, key_id, material):
    plain = os.urandom(37)
    blob = kms.encrypt(KeyId=key_id, Plaintext=plain)["CiphertextBlob"]
    # LocalStack's ciphertext: key id (36) | IV (16) | tag (16) | AES-GCM body.
    iv, tag, body = blob[36:52], blob[52:68], blob[68:]
    out = AESGCM(material).decrypt(iv, body + tag, None)
    pad = out[-1]
    if out[:-pad] != plain:
        raise SystemExit(f"key {key_id} does not hold its source material")


def level(cfg, concurrency, kms):
    url, token, keys = cfg["url"], cfg["token"], cfg["keys"]
    session = requests.Session()
    stop = threading.Event()
    measuring = threading.Event()
    lock = threading.Lock()
    lat, done, failed, made = [], [0], [0], []
    counter = [0]

    def worker():
        s = requests.Session()
        while not stop.is_set():
            with lock:
                counter[0] += 1
                i = counter[0]
            label, _ = keys[i % len(keys)]
            body = {"source_key_tier": "hsm-luna", "source_key_identifier": label,
                    "kms": cfg["kms"], "region": cfg["region"]}
            t0 = time.perf_counter()
            try:
                r = s.post(f"{url}/api/v1/cckm/aws/upload-key", json=body,
                           headers={"Authorization": f"Bearer {token}"}, timeout=120)
                ok = r.status_code == 201
            except requests.RequestException:
                ok = False
            dt = time.perf_counter() - t0
            if measuring.is_set():
                with lock:
                    if ok:
                        lat.append(dt)
                        done[0] += 1
                        if len(made) < 3:
                            made.append((r.json()["aws_param"]["KeyID"], i % len(keys)))
                    else:
                        failed[0] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(cfg["warmup"])
    calls0 = kms_calls(url, token)
    logged0 = emulator_calls(cfg["emulator_log"])
    cpu0, emu0 = cpu_seconds(cfg["pid"]), cpu_seconds(cfg["emulator_pid"])
    sw0 = ctx_switches(cfg["pid"])
    measuring.set()
    t0 = time.perf_counter()
    peak = 0.0
    while time.perf_counter() - t0 < cfg["duration"]:
        peak = max(peak, rss_mb(cfg["pid"]))
        time.sleep(0.2)
    measuring.clear()
    elapsed = time.perf_counter() - t0
    cpu1, emu1 = cpu_seconds(cfg["pid"]), cpu_seconds(cfg["emulator_pid"])
    sw1 = ctx_switches(cfg["pid"])
    calls1 = kms_calls(url, token)
    logged1 = emulator_calls(cfg["emulator_log"])
    stop.set()
    for t in threads:
        t.join()
    n = max(done[0], 1)
    for key_id, k in made:
        prove(kms, key_id, keys[k][1])
    lat.sort()
    return {
        "concurrency": concurrency,
        "uploads": done[0],
        "failed": failed[0],
        "uploads_per_s": done[0] / elapsed,
        "p50_ms": percentile(lat, 50) * 1000,
        "p95_ms": percentile(lat, 95) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "daemon_cpu_ms_per_upload": (cpu1 - cpu0) * 1000 / n,
        "daemon_rss_mb": peak,
        "daemon_context_switches_per_upload": (sw1 - sw0) / n,
        "emulator_cpu_ms_per_upload": (emu1 - emu0) * 1000 / n,
        "kms_calls_per_upload": {op: round((calls1.get(op, 0) - calls0.get(op, 0)) / n, 2)
                                 for op in sorted(calls1)
                                 if calls1.get(op, 0) - calls0.get(op, 0) > 0},
        "emulator_logged_calls_per_upload": {
            op: round((logged1.get(op, 0) - logged0.get(op, 0)) / n, 2)
            for op in sorted(logged1)
            if logged1.get(op, 0) - logged0.get(op, 0) > 0},
        "proven_sample": len(made),
    }


def main():
    cfg = json.load(open(sys.argv[1]))
    cfg["keys"] = [(k["label"], base64.b64decode(k["material"])) for k in cfg["keys"]]
    kms = boto3.client("kms", endpoint_url=cfg["kms_endpoint"], region_name=cfg["region"])
    # Idle cost: what the daemon spends with nothing to do (heartbeats, timers), which every
    # level's CPU per upload also carries.
    idle0, t0 = cpu_seconds(cfg["pid"]), time.perf_counter()
    time.sleep(IDLE_S)
    idle_ms_per_s = (cpu_seconds(cfg["pid"]) - idle0) * 1000 / (time.perf_counter() - t0)
    results = {"cold_start_s": cfg["cold_start_s"], "idle_rss_mb": rss_mb(cfg["pid"]),
               "idle_cpu_ms_per_s": idle_ms_per_s, "levels": []}
    for c in cfg["levels"]:
        r = level(cfg, c, kms)
        results["levels"].append(r)
        print(f"concurrency {c:>3}: {r['uploads_per_s']:7.1f} uploads/s  "
              f"p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
              f"daemon {r['daemon_cpu_ms_per_upload']:5.2f} ms CPU/upload, "
              f"{r['daemon_context_switches_per_upload']:5.1f} switches/upload, RSS {r['daemon_rss_mb']:5.1f} MB  "
              f"emulator {r['emulator_cpu_ms_per_upload']:6.2f} ms CPU/upload  failed {r['failed']}",
              flush=True)
        print(f"                 KMS calls per upload, the daemon's count: {r['kms_calls_per_upload']}", flush=True)
        print(f"                 KMS calls per upload, the emulator's log: {r['emulator_logged_calls_per_upload']}", flush=True)
    print(f"cold start to ready: {results['cold_start_s']:.2f} s; idle RSS {results['idle_rss_mb']:.1f} MB, "
          f"idle CPU {results['idle_cpu_ms_per_s']:.2f} ms/s")
    with open(cfg["json_out"], "w") as f:
        json.dump(results, f, indent=2)
    print(f"JSON: {cfg['json_out']}")
    if any(r["failed"] for r in results["levels"]):
        raise SystemExit("some uploads failed")


if __name__ == "__main__":
    main()
