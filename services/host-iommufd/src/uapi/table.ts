// The dispatch table of iommufd.v1.Iommufd: every RPC's handler, gathered
// from the file of the object it belongs to. RPCs absent here answer ENOTTY.
import type { Iommufd } from "@iommufd/proto/iommufd";
import type { SessionlessTable, UcmdTable } from "../core/dispatch.js";
import { fileHandlers, sessionVerbs } from "./files.js";
import { ioasHandlers } from "./ioas.js";
import { mainHandlers } from "./main.js";

export const sessionlessTable: SessionlessTable<typeof Iommufd> = sessionVerbs;

export const iommufdTable: UcmdTable<typeof Iommufd> = {
  ...fileHandlers,
  ...mainHandlers,
  ...ioasHandlers,
};
