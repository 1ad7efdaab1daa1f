// pino JSON lines as one readable line each.
import { describe, expect, it } from "vitest";
import { formatLogLine, prefixFor } from "./logfmt.js";

describe("formatLogLine", () => {
  it("turns a pino record into time, level, component: msg, key fields", () => {
    const line = JSON.stringify({
      level: 40,
      time: "2026-01-02T03:04:05.678Z",
      pid: 1,
      proc: "host",
      name: "host",
      component: "iommufd",
      msg: "device gone",
      rid: "0x18",
      why: "hot unplug",
      err: { type: "ErrnoError", message: "ENODEV (19): no device" },
    });
    expect(formatLogLine(line)).toBe('03:04:05.678 WARN  iommufd: device gone rid=0x18 why="hot unplug" err="ErrnoError: ENODEV (19): no device"');
  });

  it("passes other lines through, and prefixes with the process name", () => {
    expect(formatLogLine("node:internal/modules/run_main:123")).toBe("node:internal/modules/run_main:123");
    expect(formatLogLine("{not json")).toBe("{not json");
    expect(prefixFor("host", 0, 7)).toBe("[host]    ");
  });
});
