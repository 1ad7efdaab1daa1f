#!/usr/bin/env node
// iommufd-nested-emu command line (run: npm run cli -- <command>, or
// node --import tsx services/cli/src/main.ts <command>). Every command has
// --help. Errors print one message and exit 1 (2 for bad usage).
import { buildProgram } from "./program.js";

// `… | head` closes stdout early: that is not an error.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(0);
  throw e;
});

try {
  await buildProgram().parseAsync(process.argv);
} catch (e) {
  console.error(`error: ${(e as Error).message}`);
  process.exit(1);
}
