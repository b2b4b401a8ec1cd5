// Validate glTF/GLB files with the Khronos glTF-Validator.
// Usage: node tools/gltf-validator/validate.mjs FILE... (install first: npm ci --prefix tools/gltf-validator)
// Prints one JSON array of reports (with external resources such as a .gltf's buffers and images resolved
// beside each file) and exits 1 when any report has errors, 2 when a file cannot be read or parsed at all.
import { readFile } from "node:fs/promises";
import path from "node:path";
import validator from "gltf-validator";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate.mjs FILE...");
  process.exit(2);
}

const reports = [];
let status = 0;
for (const file of files) {
  try {
    const report = await validator.validateBytes(new Uint8Array(await readFile(file)), {
      uri: path.basename(file),
      maxIssues: 0, // report every issue, not the first 100
      writeTimestamp: false,
      externalResourceFunction: async (uri) =>
        new Uint8Array(await readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)))),
    });
    reports.push(report);
    if (report.issues.numErrors > 0) status = Math.max(status, 1);
  } catch (error) {
    console.error(`${file}: ${error}`);
    status = 2;
  }
}
console.log(JSON.stringify(reports, null, 2));
process.exit(status);
