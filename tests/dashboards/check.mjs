// Type-checks Grafana dashboard JSON files against the `Dashboard` type that @grafana/schema
// publishes, with tsc: each file becomes `const dashboard: Wire<Dashboard> = <its JSON>;`, so a
// misspelt or misplaced key (excess property) or a value of the wrong type fails the check.
// `Wire<T>` is the type as JSON carries it: TypeScript string enums (ThresholdsMode,
// FieldColorModeId) accept only their members, while a JSON file holds their string values.
//
// Usage: node check.mjs FILE.json...   (exit 0 when every file type-checks, 1 otherwise)
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node check.mjs FILE.json...");
  process.exit(2);
}

// The generated sources live next to node_modules so that `@grafana/schema` resolves.
const work = mkdtempSync(join(here, ".check-"));
const sources = [];
try {
  for (const [i, file] of files.entries()) {
    const text = readFileSync(file, "utf8");
    JSON.parse(text); // a syntax error is reported as such, not as a TypeScript error
    const source = join(work, `${i}-${basename(file, ".json")}.ts`);
    // The JSON text verbatim on the first line, so tsc's line numbers are the file's; imports
    // are hoisted, so they may follow.
    writeFileSync(
      source,
      `export const dashboard: Wire<Dashboard> = ${text.trimEnd()};\n` +
        `import type { Wire } from "../wire.js";\n` +
        `import type { Dashboard } from "@grafana/schema";\n`,
    );
    sources.push(source);
  }
  const tsc = join(here, "node_modules", "typescript", "bin", "tsc");
  const args = [tsc, "--noEmit", "--strict", "--skipLibCheck", "--target", "es2022",
    "--module", "nodenext", "--moduleResolution", "nodenext", ...sources];
  try {
    execFileSync(process.execPath, args, { cwd: here, stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    // Name the dashboard, not the generated file, in every error line.
    let out = `${e.stdout}${e.stderr}`;
    sources.forEach((s, i) => {
      out = out.split(relative(here, s)).join(files[i]);
    });
    process.stderr.write(out);
    console.error(`dashboard type check FAILED (@grafana/schema Dashboard)`);
    process.exit(1);
  }
  for (const f of files) console.log(`  OK (Dashboard type): ${f}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
