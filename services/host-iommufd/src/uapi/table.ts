// The dispatch table of iommufd.v1.Iommufd: every RPC's handler, gathered
// from the file of the object it belongs to. RPCs absent here answer ENOTTY.
import type { Iommufd } from "@iommufd/proto/iommufd";
import type { SessionlessTable, UcmdTable } from "../core/dispatch.js";
import { deviceHandlers } from "./device.js";
import { eventqHandlers } from "./eventq.js";
import { fileHandlers, sessionVerbs } from "./files.js";
import { hwptHandlers } from "./hw-pagetable.js";
import { ioasHandlers } from "./ioas.js";
import { mainHandlers } from "./main.js";
import { viommuHandlers } from "./viommu.js";

export const sessionlessTable: SessionlessTable<typeof Iommufd> = sessionVerbs;

export const iommufdTable: UcmdTable<typeof Iommufd> = {
  ...fileHandlers,
  ...mainHandlers,
  ...ioasHandlers,
  ...deviceHandlers,
  ...hwptHandlers,
  ...eventqHandlers,
  ...viommuHandlers,
};
