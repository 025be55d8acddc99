"""bench/compare.py without a benchmark run: the summary of given rounds (medians, peaks, the
targets and whether each is met) and `--diff OLD NEW` on two small results files."""
import copy
import json
import os
import subprocess
import sys
import tempfile
import unittest

COMPARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "compare.py")
sys.path.insert(0, os.path.dirname(COMPARE))
import compare  # noqa: E402


def train(tok, mfu=None, rss=100.0, est=90.0, precision="fp32"):
    r = {"tokens_per_s": tok, "peak_rss_mb": rss, "rss_estimate_mb": est}
    if mfu is not None:
        r.update(mfu=mfu, peak_precision=precision, peak_gflops=400.0)
    return r


def rounds():
    """Three rounds of every config of `make bench`, the medians chosen to sit on either side of
    the goals."""
    def three(f, *medians):
        return [f(m) for m in medians]
    return {
        "peak": [{"fma_peak_gflops": p, "bf16_peak_gflops": 2 * p, "fp32_isa": "avx512f", "bf16_isa": "avx512_bf16",
                  "amx_bf16": False} for p in (400.0, 440.0, 420.0)],
        "dense": three(lambda t: train(t, 0.81), 4000, 4100, 3900),
        "dense/peer": [train(t) for t in (1900, 2000, 2100)],  # 4000 / 2000 = 2.0x: met
        "moe": three(lambda t: train(t, 0.79), 3000, 3000, 3000),
        "moe/peer": [train(t) for t in (1600, 1600, 1600)],  # 1.875x: not met
        "dense/1thread": three(lambda t: train(t, 0.8), 2300, 2200, 2250),  # 4000 / 2250 = 1.78x: not met
        "dense512": three(lambda t: train(t, 0.86), 1000, 1000, 1000),
        "dense512/bf16": three(lambda t: train(t, 0.7, precision="bf16"), 1800, 1800, 1800),  # 1.8x: met
        "moe512": three(lambda t: train(t, 0.5), 1600, 1600, 1600),
        "moe512/bf16": three(lambda t: train(t, 0.5, precision="bf16"), 2000, 2000, 2000),  # 1.25x: not met
        "dense512_active_e8": three(lambda t: train(t, 0.5), 1800, 1800, 1800),  # 1600/1800 = 88.9%: met
        "moe512_e64": three(lambda t: train(t, 0.78, rss=130.0, est=100.0), 1400, 1400, 1400),
        "dense512_active_e64": three(lambda t: train(t, 0.5), 2100, 2100, 2100),  # 66.7%: not met
    }


class Args:
    moelab = "/nonexistent/moelab"
    baseline = None
    threads = 2
    rounds = 3


class Summary(unittest.TestCase):
    def setUp(self):
        self.s = compare.summarise(rounds(), Args(), {"cpu_model": "test", "loadavg_start": None})
        self.met = {t["target"]: t["met"] for t in self.s["targets"]}
        self.value = {t["target"]: t["measured"] for t in self.s["targets"]}

    def test_medians_and_peaks(self):
        self.assertEqual(self.s["configs"]["dense"]["tokens_per_s"], 4000)
        self.assertEqual(self.s["configs"]["dense/1thread"]["tokens_per_s"], 2250)
        self.assertEqual(self.s["configs"]["dense512/bf16"]["peak_precision"], "bf16")
        self.assertIsNone(self.s["configs"]["dense/peer"]["mfu"])
        self.assertEqual(self.s["peaks"]["fp32_gflops"], 420.0)
        self.assertEqual(self.s["peaks"]["bf16_gflops"], 840.0)
        self.assertEqual(len(self.s["configs"]["moe"]["rounds"]), 3)
        self.assertNotIn("peak", self.s["configs"])

    def test_targets(self):
        self.assertTrue(self.met["dense MFU"])
        self.assertFalse(self.met["moe (E=8 top-2) MFU"])
        self.assertTrue(self.met["dense512 MFU"])
        self.assertFalse(self.met["moe512 (E=8 top-2, iso-total) MFU"])
        self.assertTrue(self.met["moe512_e64 (E=64 top-2) MFU"])
        self.assertTrue(self.met["dense: moelab / PyTorch tokens/s"])
        self.assertFalse(self.met["moe: moelab / PyTorch tokens/s"])
        self.assertTrue(self.met["dense512: bf16 / fp32 tokens/s"])
        self.assertFalse(self.met["moe512: bf16 / fp32 tokens/s"])
        self.assertTrue(self.met["E=8 top-2 vs dense of equal active FLOPs"])
        self.assertFalse(self.met["E=64 top-2 vs dense of equal active FLOPs"])
        self.assertFalse(self.met["dense: 1 -> 2 threads"])
        self.assertAlmostEqual(self.value["dense: 1 -> 2 threads"], 4000 / 2250)
        self.assertFalse(self.met["peak RSS / (16 B x params + activations)"])
        self.assertAlmostEqual(self.value["peak RSS / (16 B x params + activations)"], 1.3)

    def test_json_round_trip(self):
        again = json.loads(json.dumps(self.s))
        self.assertEqual(again["targets"], self.s["targets"])


class Diff(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        old = compare.summarise(rounds(), Args(), {"cpu_model": "test", "loadavg_start": None})
        new = copy.deepcopy(old)
        new["configs"]["dense"]["tokens_per_s"] = 3600  # 0.9x: a regression
        new["configs"]["moe"]["tokens_per_s"] = 3030  # 1.01x
        new["configs"]["moe"]["mfu"] = 0.81  # the MoE MFU target now met
        new["targets"][1]["met"] = True
        del new["configs"]["dense512"]  # a config only the old run has is left out
        self.old = os.path.join(self.dir.name, "old.json")
        self.new = os.path.join(self.dir.name, "new.json")
        for path, s in ((self.old, old), (self.new, new)):
            with open(path, "w") as f:
                json.dump(s, f)

    def tearDown(self):
        self.dir.cleanup()

    def diff(self, *extra):
        return subprocess.run([sys.executable, COMPARE, "--diff", self.old, self.new, *extra],
                              capture_output=True, text=True)

    def test_ratios(self):
        p = self.diff()
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = {line.split("|")[1].strip(): line for line in p.stdout.splitlines() if line.startswith("| ")}
        self.assertIn("0.900", lines["dense"])
        self.assertIn("NO", lines["dense"])
        self.assertIn("1.010", lines["moe"])
        self.assertIn("yes", lines["moe"])
        self.assertIn("1.000", lines["peak fp32"])
        self.assertNotIn("dense512", lines)
        self.assertIn("target moe (E=8 top-2) MFU: not met -> met", p.stdout)

    def test_rows(self):
        with open(self.old) as f:
            old = json.load(f)
        with open(self.new) as f:
            new = json.load(f)
        rows = {r["config"]: r for r in compare.diff_rows(old, new, 0.03)}
        self.assertAlmostEqual(rows["dense"]["ratio"], 0.9)
        self.assertFalse(rows["dense"]["within"])
        self.assertTrue(rows["dense/1thread"]["within"])

    def test_check_and_tolerance(self):
        self.assertEqual(self.diff("--check").returncode, 1)
        self.assertEqual(self.diff("--check", "--tolerance", "0.15").returncode, 0)

    def test_bad_file(self):
        with open(self.new, "w") as f:
            f.write("{\"configs\": ")
        p = self.diff()
        self.assertEqual(p.returncode, 1)
        self.assertIn("new.json: invalid JSON", p.stderr)
        os.remove(self.new)
        p = self.diff()
        self.assertIn("new.json: cannot read", p.stderr)


if __name__ == "__main__":
    unittest.main()
