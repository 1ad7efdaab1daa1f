// Process configuration: flags (commander) with environment fallbacks,
// validated with zod; a bad value stops the process with a message naming
// the flag and the variable, and exit code 2.
import { type Command, Option } from "commander";
import { z } from "zod";
import { LOG_LEVELS } from "./log.js";

export const commonConfigSchema = z.object({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, "lower-case letters, digits and dashes"),
  natsUrl: z.string().regex(/^(nats|tls|ws|wss):\/\/[^\s]+$/, "a nats:// URL"),
  grpcHost: z.string().min(1),
  grpcPort: z.coerce.number().int().min(0).max(65535),
  logLevel: z.enum(LOG_LEVELS),
});

export type CommonConfig = z.infer<typeof commonConfigSchema>;

/** The options every service process takes; `defaults.name` is its process name. */
export function commonOptions(cmd: Command, defaults: { name: string; grpcPort: number }): Command {
  return cmd
    .addOption(new Option("--name <name>", "process name (NATS connection name, control subjects)").env("IOMMUFD_NAME").default(defaults.name))
    .addOption(new Option("--nats-url <url>", "NATS server to connect to").env("NATS_URL").default("nats://127.0.0.1:4222"))
    .addOption(new Option("--grpc-host <host>", "address to serve gRPC on").env("GRPC_HOST").default("127.0.0.1"))
    .addOption(new Option("--grpc-port <port>", "port to serve gRPC on (0 = any free port)").env("GRPC_PORT").default(String(defaults.grpcPort)))
    .addOption(new Option("--log-level <level>", "pino log level").choices(LOG_LEVELS).env("LOG_LEVEL").default("info"));
}

/** Validate parsed options against a schema; on failure print every problem and exit 2. */
export function validate<T extends z.ZodType>(schema: T, raw: unknown, cmd: Command): z.infer<T> {
  const r = schema.safeParse(raw);
  if (r.success) return r.data;
  const lines = r.error.issues.map((i) => {
    const key = String(i.path[0] ?? "");
    const opt = cmd.options.find((o) => o.attributeName() === key);
    const where = opt ? `${opt.long}${opt.envVar ? ` (env ${opt.envVar})` : ""}` : key;
    return `  ${where}: ${i.message}`;
  });
  cmd.error(`invalid configuration:\n${lines.join("\n")}`, { exitCode: 2, code: "config.invalid" });
}
