// protobuf-es v2 ↔ grpc-js: the service definition grpc-js needs, built from a
// generated service descriptor. Serializers wrap without copying.
import { type DescMessage, type DescMethod, type DescService, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { MethodDefinition, ServiceDefinition } from "@grpc/grpc-js";

export function serializer(schema: DescMessage) {
  return (msg: unknown): Buffer => {
    const bytes = toBinary(schema, msg as never);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

export function deserializer(schema: DescMessage) {
  // A Buffer decodes to Buffers in bytes fields: view it as a plain Uint8Array first.
  return (buf: Buffer) => fromBinary(schema, new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength));
}

export function methodPath(service: DescService, method: DescMethod): string {
  return `/${service.typeName}/${method.name}`;
}

export function serviceDefinition(service: DescService): ServiceDefinition {
  const def: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    def[m.localName] = {
      path: methodPath(service, m),
      requestStream: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
      responseStream: m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming",
      requestSerialize: serializer(m.input),
      requestDeserialize: deserializer(m.input),
      responseSerialize: serializer(m.output),
      responseDeserialize: deserializer(m.output),
      originalName: m.name,
    };
  }
  return def;
}
