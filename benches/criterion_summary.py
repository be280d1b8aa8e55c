#!/usr/bin/env python3
"""Prints the latest criterion results (target/criterion/**/new) of benches/verify.rs and
benches/pipeline.rs as Markdown tables, with the ratios BENCHMARKS.md reports. Each ratio divides
two medians taken in the same `cargo bench` run. Standard library only.

Usage: python3 benches/criterion_summary.py [TARGET_DIR]
"""

import json
import os
import sys

ALGORITHMS = ["EdDSA", "ES256", "RS256", "HS256"]


def load(root):
    results = {}
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        results[meta["full_id"]] = {
            "median": est["median"]["point_estimate"],
            "mad": est["median_abs_dev"]["point_estimate"],
        }
    return results


def ns(value):
    if value >= 1000:
        return f"{value / 1000:.2f} µs"
    return f"{value:.0f} ns"


def cell(results, key):
    r = results.get(key)
    return ns(r["median"]) if r else "–"


def ratio(results, a, b):
    ra, rb = results.get(a), results.get(b)
    if not ra or not rb:
        return "–"
    return f"{ra['median'] / rb['median']:.2f}x"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "target"
    results = load(os.path.join(root, "criterion"))
    if not results:
        print(f"no criterion results under {root}/criterion; run cargo bench first")
        return 1

    print("### Token verification (median per call)\n")
    print("| alg | gatehouse Verifier::verify | jsonwebtoken::decode | aws-lc parsed key "
          "| aws-lc UnparsedPublicKey | gatehouse / jsonwebtoken | gatehouse / parsed primitive |")
    print("|---|---|---|---|---|---|---|")
    for alg in ALGORITHMS:
        g = f"verify/{alg}/"
        print(f"| {alg} | {cell(results, g + 'gatehouse_verifier')} "
              f"| {cell(results, g + 'jsonwebtoken_decode')} "
              f"| {cell(results, g + 'aws_lc_parsed_key')} "
              f"| {cell(results, g + 'aws_lc_unparsed_key')} "
              f"| {ratio(results, g + 'gatehouse_verifier', g + 'jsonwebtoken_decode')} "
              f"| {ratio(results, g + 'gatehouse_verifier', g + 'aws_lc_parsed_key')} |")
    hit = "verify/cache_hit/auth_service_verify_access"
    print(f"\nCache hit (`AuthService::verify_access`, EdDSA token already verified): "
          f"{cell(results, hit)}; vs a full EdDSA verification: "
          f"{ratio(results, hit, 'verify/EdDSA/gatehouse_verifier')}\n")

    print("### Header hygiene on a 20-header request (median per call)\n")
    print("| stage | time | / cloning the HeaderMap |")
    print("|---|---|---|")
    base = "headers_20/baseline_clone_headermap"
    for stage in ["baseline_clone_headermap", "remove_hop_by_hop", "remove_untrusted_forwarding",
                  "identity_scrub", "set_forwarding", "inject_identity", "full_sequence"]:
        key = f"headers_20/{stage}"
        print(f"| {stage} | {cell(results, key)} | {ratio(results, key, base)} |")

    print("\n### Path normalisation (median per call)\n")
    print("| path | normalize | to_owned baseline | ratio |")
    print("|---|---|---|---|")
    for label in ["short", "static_asset", "long_10_segments", "percent_encoded", "dot_segments"]:
        a, b = f"path_normalize/normalize/{label}", f"path_normalize/baseline_to_owned/{label}"
        print(f"| {label} | {cell(results, a)} | {cell(results, b)} | {ratio(results, a, b)} |")

    print("\n### Route matching (median per call)\n")
    print("| routes | first in table | middle of table | miss (scans all) | miss per route |")
    print("|---|---|---|---|---|")
    for n in [10, 100, 1000]:
        miss = results.get(f"route_find/miss/{n}")
        per = f"{miss['median'] / n:.1f} ns" if miss else "–"
        print(f"| {n} | {cell(results, f'route_find/hit_first/{n}')} "
              f"| {cell(results, f'route_find/hit_middle/{n}')} "
              f"| {cell(results, f'route_find/miss/{n}')} | {per} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
