#!/usr/bin/env bash
# Offline checks for the deployment assets:
#   - Prometheus alert rules: promtool check rules + promtool unit tests
#   - the example Prometheus config: promtool check config
#   - Grafana dashboards: JSON syntax (python3 -m json.tool), no ${DS_*} import placeholders,
#     every panel on a datasource variable, and every PromQL expression parses (promtool, after
#     substituting Grafana's $__rate_interval, $__range, $__interval, $service and $watch)
#   - provisioning YAML and Kubernetes manifests: YAML syntax (if PyYAML is installed), and
#     Kubernetes schemas (if the kubernetes-validate CLI is on PATH)
#
# Needs promtool (Debian: apt-get install prometheus) and python3. Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
prom="$here/prometheus"
dash="$root/dashboards"

if ! command -v promtool >/dev/null 2>&1; then
  echo "check.sh: promtool not found (apt-get install prometheus)" >&2
  exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== promtool check rules"
promtool check rules "$prom/crosstalk-rules.yml"

echo "== promtool test rules"
promtool test rules "$prom/crosstalk-rules.test.yml"

echo "== promtool check config"
promtool check config "$prom/prometheus.example.yml"

echo "== dashboard JSON syntax"
shopt -s nullglob
dashboards=("$dash"/*.json)
if [ "${#dashboards[@]}" -eq 0 ]; then
  echo "no dashboards found in $dash" >&2
  exit 1
fi
for f in "${dashboards[@]}"; do
  python3 -m json.tool "$f" >/dev/null
  echo "  OK: ${f#"$root"/}"
done

echo "== dashboard structure and PromQL"
python3 - "$tmp/dashboard-exprs.yml" "${dashboards[@]}" <<'PY'
import json
import re
import sys

out, files = sys.argv[1], sys.argv[2:]
errors = []
exprs = []  # (file, where, expr)

# Each expression is checked once per substitution set, so that both the "All" value and a
# multi-value selection of the template variables give valid PromQL.
SUBSTITUTIONS = [
    {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "30s", "$service": ".*", "$watch": ".*"},
    {"$__rate_interval": "2m", "$__range": "15m", "$__interval": "15s",
     "$service": "(api|chat)", "$watch": "(agent_factory|ws_emitter)"},
]

def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))

for path in files:
    with open(path) as f:
        text = f.read()
    d = json.loads(text)
    name = path.rsplit("/", 1)[-1]
    if "${DS_" in text or "__inputs" in d:
        errors.append(f"{name}: uses import-time ${{DS_...}} inputs; use the datasource variables")
    for key in ("uid", "title", "panels", "schemaVersion", "templating"):
        if key not in d:
            errors.append(f"{name}: missing top-level {key!r}")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append(f"{name}: needs a template variable 'datasource' of type datasource (prometheus)")
    ids = set()
    for p in walk_panels(d.get("panels", [])):
        pid = p.get("id")
        if pid in ids:
            errors.append(f"{name}: duplicate panel id {pid}")
        ids.add(pid)
        if p.get("type") in ("row", "text"):
            continue
        where = f"{name}: panel {pid} {p.get('title')!r}"
        pds = p.get("datasource") or {}
        if not str(pds.get("uid", "")).startswith("${"):
            errors.append(f"{where}: datasource uid must be a template variable, got {pds!r}")
        targets = p.get("targets") or []
        if not targets:
            errors.append(f"{where}: no targets")
        for t in targets:
            tds = t.get("datasource") or pds
            if tds.get("type") == "prometheus":
                if not t.get("expr"):
                    errors.append(f"{where}: prometheus target {t.get('refId')} without expr")
                    continue
                exprs.append((where + f" target {t.get('refId')}", t["expr"]))
    # Variable queries: check the series selector inside label_values(...) the same way.
    for v in variables.values():
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q or "")
        if not m:
            errors.append(f"{name}: variable {v['name']}: unexpected query {q!r}")
            continue
        exprs.append((f"{name}: variable {v['name']}", m.group(1)))

rules = []
for where, expr in exprs:
    for i, subs in enumerate(SUBSTITUTIONS):
        e = expr
        # Longest names first, so that $__range is not eaten by a shorter name.
        for k in sorted(subs, key=len, reverse=True):
            e = e.replace(k, subs[k])
        if "$" in e:
            errors.append(f"{where}: unsubstituted variable in {e!r}")
            continue
        rules.append((f"{where} (substitution set {i})", e))

with open(out, "w") as f:
    f.write("groups:\n  - name: dashboard-expressions\n    rules:\n")
    for n, (where, e) in enumerate(rules):
        f.write(f"      # {where}\n")
        f.write(f"      - record: dashboard_expr_{n}\n")
        f.write(f"        expr: {json.dumps(e)}\n")

for e in errors:
    print("  ERROR:", e, file=sys.stderr)
print(f"  {len(exprs)} expressions, {len(rules)} substituted forms written for promtool")
sys.exit(1 if errors else 0)
PY
promtool check rules "$tmp/dashboard-exprs.yml"

if python3 -c 'import yaml' 2>/dev/null; then
  echo "== YAML syntax (provisioning, kubernetes)"
  for f in "$dash"/provisioning/*.yml "$here"/kubernetes/*.yaml; do
    python3 -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$f"
    echo "  OK: ${f#"$root"/}"
  done
else
  echo "== YAML syntax: skipped (python3 has no PyYAML)"
fi

if command -v kubernetes-validate >/dev/null 2>&1; then
  # Kinds it has no schema for (ServiceMonitor, Kustomization) are a WARN, not a failure.
  echo "== kubernetes-validate --strict"
  kubernetes-validate --strict --quiet "$here"/kubernetes/*.yaml
else
  echo "== kubernetes-validate: skipped (pip install kubernetes-validate)"
fi

echo "all checks passed"
