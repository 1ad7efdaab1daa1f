// The processes of the system benchmarks (sections 2–5), all on 127.0.0.1:
// a nats-server of our own (startNatsServer, through TestTopology), a real
// host-iommufd, one device-sim process with every endpoint the sections use
// (from a config file), and the baseline peer (scripts/bench/peer.ts: a raw
// grpc-js echo server and a NATS sink). Also the clients the sections share
// and the two raw baselines: an echo call of given sizes and a NATS
// request/reply to the host's ping responder.
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Client, credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { Bus, createClient, createLogger, subjects } from "@iommufd/kit";
import { DeviceRegisterReplySchema, DeviceRegisterSchema, DeviceUnregisterReplySchema, DeviceUnregisterSchema, PingSchema, PongSchema } from "@iommufd/proto/bus";
import { Device } from "@iommufd/proto/device";
import { Admin } from "@iommufd/proto/iommufd";
import { REPO_ROOT, TestTopology, type UapiSession, openSession } from "@iommufd/testkit";
import { sleep } from "./common.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ECHO_PATH = "/bench.Echo/Echo";

/** The device-sim endpoints, by role. */
export const RID = {
  dma: 0x0100,
  invPlain: 0x0108,
  invNested: 0x0110,
  /** Registered by the bench itself on the bus (vEVENTQ latency). */
  busDevice: 0x0700,
  /** Registered by the bench itself on the bus (bare DMA, no device-sim). */
  busDma: 0x0708,
  scaleBase: 0x1000,
} as const;
export const SCALE_DEVICES = 64;
export const scaleRid = (i: number) => RID.scaleBase + i * 8;

function endpointsConfig(): object {
  const eps: object[] = [
    { name: "dma", rid: `0x${RID.dma.toString(16)}`, iommu: "smmu0", ats: true, atc: 4096, batch: 64, inflight: 8 },
    { name: "invplain", rid: `0x${RID.invPlain.toString(16)}`, iommu: "smmu0", ats: true, atc: 64 },
    { name: "invnested", rid: `0x${RID.invNested.toString(16)}`, iommu: "smmu0", ats: true, atc: 64 },
  ];
  for (let i = 0; i < SCALE_DEVICES; i++) eps.push({ name: `s${i}`, rid: `0x${scaleRid(i).toString(16)}`, iommu: "smmu0", batch: 64, inflight: 8 });
  return { endpoints: eps };
}

export interface Peer {
  grpcPort: number;
  /** The kit (protobuf-es) server with a stub Admin.GetTunables. */
  kitPort: number;
  child: ChildProcess;
  stop(): Promise<void>;
}

async function startPeer(natsUrl: string, logDir: string): Promise<Peer> {
  const child = spawn(process.execPath, ["--import", "tsx", join(HERE, "peer.ts"), natsUrl], { cwd: REPO_ROOT, stdio: ["pipe", "pipe", "pipe"] });
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  const log: string[] = [];
  child.stderr?.on("data", (d: Buffer) => log.push(d.toString()));
  const ports = await new Promise<{ grpcPort: number; kitPort: number }>((resolve, reject) => {
    let buf = "";
    const t = setTimeout(() => reject(new Error(`bench peer not ready:\n${log.join("")}`)), 30_000);
    child.stdout?.on("data", (d: Buffer) => {
      buf += d.toString();
      const m = /\{"ready":true,"grpcPort":(\d+),"kitPort":(\d+)\}/.exec(buf);
      if (m) {
        clearTimeout(t);
        resolve({ grpcPort: Number(m[1]), kitPort: Number(m[2]) });
      }
    });
    child.once("exit", (code) => {
      clearTimeout(t);
      reject(new Error(`bench peer exited (${code}):\n${log.join("")}`));
    });
  });
  return {
    ...ports,
    child,
    stop: async () => {
      process.off("exit", killOnExit);
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const force = setTimeout(() => child.kill("SIGKILL"), 3000);
      await exited;
      clearTimeout(force);
      writeFileSync(join(logDir, "peer.log"), log.join(""));
    },
  };
}

export class BenchSystem {
  private pingSeq = 0n;
  private constructor(
    readonly topo: TestTopology,
    readonly peer: Peer,
    readonly bus: Bus,
    public admin: ReturnType<typeof createClient<typeof Admin>>,
    public device: ReturnType<typeof createClient<typeof Device>>,
    readonly echoClient: Client,
    /** Admin client of the peer's kit server (stub GetTunables). */
    readonly kitAdmin: ReturnType<typeof createClient<typeof Admin>>,
    readonly logDir: string,
  ) {}

  /**
   * Between sections: if the host or the device-sim stopped answering
   * (a section that failed may leave one wedged), restart it under the same
   * name and wait until every endpoint is registered again. Returns what
   * was restarted.
   */
  async ensureHealthy(): Promise<string[]> {
    const restarted: string[] = [];
    const answers = (p: Promise<unknown>) => p.then(() => true, () => false);
    if (!(await answers(this.admin.rpc.inventory({}, { deadlineMs: 5000 })))) {
      await this.topo.restart("host");
      this.admin.close();
      this.admin = createClient(Admin, this.hostAddress);
      restarted.push("host");
    }
    if (!(await answers(this.device.rpc.listEndpoints({}, { deadlineMs: 5000 })))) {
      await this.topo.restart("devsim");
      this.device.close();
      this.device = createClient(Device, this.topo.get("devsim").address);
      restarted.push("devsim");
    }
    if (restarted.length > 0) await this.waitEndpointsRegistered(60_000);
    return restarted;
  }

  static async start(logDir: string): Promise<BenchSystem> {
    mkdirSync(logDir, { recursive: true });
    const cfgFile = join(logDir, "device-sim-endpoints.json");
    writeFileSync(cfgFile, JSON.stringify(endpointsConfig(), null, 1));
    const topo = await TestTopology.start(
      [
        { kind: "host-iommufd", name: "host", args: ["--iommu", "smmu0=smmuv3,dmar0=vtd"] },
        { kind: "device-sim", name: "devsim", args: ["--config", cfgFile] },
      ],
      { logDir, logLevel: "info", readyTimeoutMs: 60_000 },
    );
    let peer: Peer | undefined;
    try {
      peer = await startPeer(topo.natsUrl, logDir);
      const bus = await Bus.connect({ url: topo.natsUrl, name: "bench", log: createLogger("bench", "silent") });
      const admin = createClient(Admin, topo.get("host").address);
      const device = createClient(Device, topo.get("devsim").address);
      const echoClient = new Client(`127.0.0.1:${peer.grpcPort}`, credentials.createInsecure(), {
        "grpc.max_receive_message_length": 64 << 20,
        "grpc.max_send_message_length": 64 << 20,
      });
      const kitAdmin = createClient(Admin, `127.0.0.1:${peer.kitPort}`);
      const sys = new BenchSystem(topo, peer, bus, admin, device, echoClient, kitAdmin, logDir);
      await sys.waitEndpointsRegistered(60_000);
      return sys;
    } catch (e) {
      await peer?.stop();
      await topo.stop();
      throw e;
    }
  }

  get hostAddress(): string {
    return this.topo.get("host").address;
  }

  async waitEndpointsRegistered(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { endpoints } = await this.device.rpc.listEndpoints({});
      const missing = endpoints.filter((e) => !e.registered);
      if (endpoints.length > 0 && missing.length === 0) return;
      if (Date.now() > deadline) throw new Error(`device-sim endpoints not registered: ${missing.map((e) => e.name).join(", ")}`);
      await sleep(100);
    }
  }

  session(name: string): Promise<UapiSession> {
    return openSession(this.hostAddress, { clientName: name, leaseMs: 300_000 });
  }

  /** One raw grpc-js unary call sending `reqBytes` and receiving `respBytes` (with the session token as metadata when given, as the uAPI client sends it). */
  echo(reqBytes: number, respBytes: number, token?: string): Promise<void> {
    const req = Buffer.alloc(Math.max(4, reqBytes));
    req.writeUInt32LE(respBytes, 0);
    const md = new Metadata();
    if (token !== undefined) md.set("iommufd-session", token);
    md.set("x-correlation-id", randomUUID());
    return new Promise((resolve, reject) => {
      this.echoClient.makeUnaryRequest(
        ECHO_PATH,
        (b: Buffer) => b,
        (b: Buffer) => b,
        req,
        md,
        { deadline: Date.now() + 15_000 },
        (err: ServiceError | null) => (err ? reject(err) : resolve()),
      );
    });
  }

  /** Raw NATS request/reply to the host's ping responder (protobuf Ping/Pong through the kit Bus, no IOMMU work). */
  async ping(opts: { payloadBytes?: number; responseBytes?: number } = {}): Promise<boolean> {
    const payload = new Uint8Array(opts.payloadBytes ?? 16);
    const pong = await this.bus.request(subjects.ping("host"), PingSchema, { seq: ++this.pingSeq, payload, responseSize: opts.responseBytes ?? 0 }, PongSchema);
    return pong.payload.length === (opts.responseBytes || payload.length);
  }

  /** Register the bench itself as a bare bus device (no device-sim) behind smmu0, to send DMA from the bench. */
  async registerBusDevice(rid: number, name: string): Promise<void> {
    const reg = await this.bus.request(
      subjects.register,
      DeviceRegisterSchema,
      { seq: 1n, rid, name, process: "bench", iommuId: "smmu0", maxPasidLog2: 0, ats: false, pri: false, maxBatch: 64 },
      DeviceRegisterReplySchema,
    );
    if (reg.iommuId !== "smmu0") throw new Error(`bus device registered behind ${reg.iommuId}`);
  }

  /** Undo registerBusDevice (best effort: the bench is ending a section). */
  async unregisterBusDevice(rid: number): Promise<void> {
    await this.bus
      .request(subjects.unregister, DeviceUnregisterSchema, { seq: 2n, rid, process: "bench" }, DeviceUnregisterReplySchema, { timeoutMs: 2000 })
      .catch(() => undefined);
  }

  async stop(): Promise<void> {
    this.echoClient.close();
    this.kitAdmin.close();
    this.admin.close();
    this.device.close();
    await this.bus.close().catch(() => undefined);
    await this.peer.stop();
    await this.topo.stop();
  }
}
