// Validates prometheus-operator objects against the CRD schemas of
// @kubernetes-models/prometheus-operator (npm ci in this directory installs it).
//
//   node validate.mjs [FILE]      FILE or stdin: JSON, an array of objects, one object, or a List
//
// Node has no YAML parser; convert first, e.g.
//   kubectl kustomize deploy/kubernetes/overlays/gpu \
//     | python -c 'import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))' \
//     | node tests/deploy/crd/validate.mjs
//
// Prints one line per object. ServiceMonitor and PrometheusRule are validated; any other kind of
// monitoring.coreos.com is an error (no schema here is checked for it); objects of other API
// groups are listed as skipped. Exits 1 at the first invalid object, 2 on unreadable input.
import { readFileSync } from "node:fs";
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const MODELS = {
  "monitoring.coreos.com/v1 ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1 PrometheusRule": PrometheusRule,
};

function objects(text) {
  const data = JSON.parse(text);
  if (Array.isArray(data)) return data;
  if (data && data.kind === "List" && Array.isArray(data.items)) return data.items;
  return [data];
}

function describe(obj) {
  return `${obj?.apiVersion ?? "?"} ${obj?.kind ?? "?"}/${obj?.metadata?.name ?? "?"}`;
}

let input;
try {
  const path = process.argv[2];
  input = objects(readFileSync(path && path !== "-" ? path : 0, "utf8"));
} catch (error) {
  console.error(`error: cannot read the objects: ${error.message}`);
  process.exit(2);
}

for (const obj of input) {
  const apiVersion = String(obj?.apiVersion ?? "");
  if (!apiVersion.startsWith("monitoring.coreos.com/")) {
    console.log(`skip ${describe(obj)}`);
    continue;
  }
  const Model = MODELS[`${apiVersion} ${obj.kind}`];
  if (Model === undefined) {
    console.log(`FAIL ${describe(obj)}: no schema for this kind here (known: ${Object.keys(MODELS).join(", ")})`);
    process.exit(1);
  }
  try {
    new Model(obj).validate();
  } catch (error) {
    console.log(`FAIL ${describe(obj)}: ${error.message}`);
    process.exit(1);
  }
  console.log(`ok ${describe(obj)}`);
}
