"""Validates the objects `kubectl kustomize` renders (a YAML stream on stdin), offline.

Kubernetes' own kinds: kubernetes-validate's strict schemas (unknown fields rejected).
The Prometheus Operator's kinds (PodMonitor, PrometheusRule): the operator's generated
models (cloudcoil.models.prometheus_operator), which check types and required fields;
a field they drop on the way back out is one the operator does not know, so a round trip
that loses a field fails too. Any other kind fails: nothing goes unchecked.

Exit 0 when every object passes; otherwise each failure on stderr and exit 1.
"""

import json
import sys

import kubernetes_validate
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

KUBERNETES_VERSION = "1.30.0"


def lost_fields(given, back, path=""):
    """Paths in `given` that `back` no longer has."""
    if isinstance(given, dict) and isinstance(back, dict):
        out = []
        for key, value in given.items():
            if key not in back:
                out.append(f"{path}/{key}")
            else:
                out += lost_fields(value, back[key], f"{path}/{key}")
        return out
    if isinstance(given, list) and isinstance(back, list):
        out = []
        for i, (a, b) in enumerate(zip(given, back)):
            out += lost_fields(a, b, f"{path}/{i}")
        return out
    return []


def check(doc):
    kind, api = doc.get("kind"), doc.get("apiVersion", "")
    if api.startswith("monitoring.coreos.com/"):
        model = getattr(monitoring_v1, kind, None)
        if api != "monitoring.coreos.com/v1" or model is None:
            return [f"no schema for {api} {kind}"]
        back = json.loads(
            model.model_validate(doc).model_dump_json(by_alias=True, exclude_unset=True)
        )
        return [f"unknown field {p}" for p in lost_fields(doc, back)]
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    return []


def main():
    failures, checked = 0, 0
    for doc in yaml.safe_load_all(sys.stdin):
        if not doc:
            continue
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            problems = check(doc)
        except Exception as e:  # every validator's error is a failure of this object
            problems = [str(e).splitlines()[0] if str(e) else repr(e)]
        for problem in problems:
            print(f"{name}: {problem}", file=sys.stderr)
        failures += bool(problems)
        checked += 1
        if not problems:
            print(f"{name}: valid")
    if checked == 0:
        print("no objects on stdin", file=sys.stderr)
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
