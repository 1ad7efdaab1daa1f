// Lint: eslint's and typescript-eslint's recommended rules for the whole tree,
// and the purity rules for packages/hw (no Node built-ins, no I/O, no timers).
import js from "@eslint/js";
import globals from "globals";
import tseslint from "typescript-eslint";

const NODE_BUILTINS = [
  "assert", "buffer", "child_process", "cluster", "crypto", "dgram", "dns", "events", "fs", "fs/promises",
  "http", "http2", "https", "net", "os", "path", "perf_hooks", "process", "readline", "stream", "timers",
  "tls", "url", "util", "v8", "vm", "worker_threads", "zlib",
];

export default tseslint.config(
  { ignores: ["**/node_modules/**", "packages/proto/src/gen/**", ".tmp/**", "bench-results/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-unsafe-function-type": "off",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
    },
  },
  { files: ["**/*.{js,mjs}"], languageOptions: { globals: globals.node } },
  {
    files: ["packages/hw/src/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          paths: NODE_BUILTINS.map((name) => ({ name, message: "packages/hw is pure: no Node built-ins" })),
          patterns: [{ group: ["node:*"], message: "packages/hw is pure: no Node built-ins" }],
        },
      ],
      "no-restricted-globals": [
        "error",
        ...["setTimeout", "setInterval", "setImmediate", "queueMicrotask", "process", "Buffer", "require", "fetch", "console"].map((name) => ({
          name,
          message: "packages/hw is pure: no timers, no I/O, no Node globals",
        })),
      ],
    },
  },
);
