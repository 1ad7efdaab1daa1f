// Client side of the standard grpc.health.v1 service (served by every process).
import { credentials, makeGenericClientConstructor, type ServiceDefinition } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";

const HealthClient = makeGenericClientConstructor(healthService as unknown as ServiceDefinition, "grpc.health.v1.Health");

/** Ask `address` for the health of `service` ("" = the whole server). Resolves to SERVING, NOT_SERVING, ... */
export function checkHealth(address: string, service = "", deadlineMs = 2000): Promise<string> {
  const client = new HealthClient(address, credentials.createInsecure());
  return new Promise<string>((resolve, reject) => {
    (client as unknown as Record<string, Function>).check(
      { service },
      { deadline: Date.now() + deadlineMs },
      (err: Error | null, res?: { status: string }) => {
        client.close();
        if (err) reject(err);
        else resolve(String(res?.status));
      },
    );
  });
}
