// The command tree of the iommufd-nested-emu CLI (main.ts runs it).
import { Command } from "commander";
import { composeCommand } from "./commands/compose.js";
import { demoCommand } from "./commands/demo.js";
import { downCommand } from "./commands/down.js";
import { eventsCommand } from "./commands/events.js";
import { explainCommand } from "./commands/explain.js";
import { faultCommand } from "./commands/fault.js";
import { procCommand } from "./commands/proc.js";
import { statusCommand } from "./commands/status.js";
import { upCommand } from "./commands/up.js";
import { walkCommand } from "./commands/walk.js";

export { ACTIONS as FAULT_ACTIONS, DIRECTIONS as FAULT_DIRECTIONS } from "./commands/fault.js";

export function buildProgram(): Command {
  const program = new Command("iommufd-cli")
    .description("Operate the iommufd-nested-emu topology: start and stop it, inspect it, inject faults, walk page tables")
    .showHelpAfterError("(add --help for usage)")
    .addHelpText(
      "after",
      `
Topology: one YAML description (see packages/topology/src/default.ts for the format) drives
both \`up\` (local processes) and \`compose\` (deploy/compose.yaml, deploy/Dockerfile).`,
    );
  demoCommand(program);
  upCommand(program);
  downCommand(program);
  statusCommand(program);
  procCommand(program);
  faultCommand(program);
  composeCommand(program);
  walkCommand(program);
  explainCommand(program);
  eventsCommand(program);
  return program;
}

