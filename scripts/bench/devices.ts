// Helpers over the device-sim control service (device.v1) and the host's
// uAPI that the DMA and scale sections share: run a workload to its end,
// give a set of endpoints one IOAS with a mapped region.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type WorkloadSpecSchema, WorkloadState, type WorkloadStatus } from "@iommufd/proto/device";
import { IoasMapFlags, MmapFlags, MmapProt } from "@iommufd/proto/iommufd";
import type { UapiSession } from "@iommufd/testkit";
import { sleep } from "./common.js";
import type { BenchSystem } from "./system.js";

/** Start a workload and wait for it to end (its own duration_ms / count bound it; `timeoutMs` bounds the wait). */
export async function runWorkload(sys: BenchSystem, spec: MessageInitShape<typeof WorkloadSpecSchema>, timeoutMs = 60_000): Promise<WorkloadStatus> {
  const { workloadId } = await sys.device.rpc.startWorkload({ spec });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    await sleep(50);
    const st = (await sys.device.rpc.getWorkload({ workloadId })).status;
    if (st && st.state !== WorkloadState.RUNNING) return st;
    if (Date.now() > deadline) {
      const stopped = (await sys.device.rpc.stopWorkload({ workloadId })).status;
      if (!stopped) throw new Error(`workload ${workloadId} did not end`);
      return stopped;
    }
  }
}

/** Anonymous user memory of `bytes`, mapped at `iova` into a new IOAS, with the endpoints `rids` bound and attached. */
export async function ioasWithDevices(s: UapiSession, rids: number[], iova: bigint, bytes: bigint): Promise<{ ioasId: number; devIds: number[]; va: bigint }> {
  const { addr: va } = await s.io.mmap({ length: bytes, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.PRIVATE | MmapFlags.ANONYMOUS });
  const { outIoasId: ioasId } = await s.io.ioasAlloc({});
  const devIds: number[] = [];
  for (const rid of rids) {
    const { outDevid } = await s.io.deviceBind({ device: { case: "rid", value: rid } });
    await s.io.deviceAttach({ devId: outDevid, ptId: ioasId });
    devIds.push(outDevid);
  }
  await s.io.ioasMap({ ioasId, flags: IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE | IoasMapFlags.FIXED_IOVA, userVa: va, length: bytes, iova });
  return { ioasId, devIds, va };
}
