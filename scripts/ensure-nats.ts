// Setup step: make sure a nats-server binary is available (tests and the demo
// start their own on free ports). Honours NATS_URL (nothing to find then).
import { ensureNatsServer, INSTALL_HINT } from "@iommufd/kit";

if (process.env.NATS_URL) {
  console.log(`setup: using NATS at ${process.env.NATS_URL}`);
} else {
  try {
    console.log(`setup: nats-server at ${ensureNatsServer((m) => console.log(`setup: ${m}`))}`);
  } catch (e) {
    console.error(`setup: ${(e as Error).message || INSTALL_HINT}`);
    process.exit(1);
  }
}
