// Builds the app into the gateway's static folder, which is committed and
// shipped in the Python package. File names carry no hash and the build
// embeds no time, so the same sources always give the same bytes.
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const gateway = process.env.AUTOSTEP_GATEWAY ?? "http://127.0.0.1:8080";
const apiPaths = ["/projects", "/workflows", "/jobs", "/triggers", "/hooks", "/functions", "/conditions"];

export default defineConfig({
  base: "/ui/",
  plugins: [react()],
  build: {
    outDir: "../gateway/http/static/ui",
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 2000,
    rollupOptions: {
      output: {
        entryFileNames: "assets/app.js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/[name][extname]",
      },
    },
  },
  server: {
    // `npm run dev`: the API and the websocket of a gateway running beside it
    proxy: {
      ...Object.fromEntries(apiPaths.map((path) => [path, gateway])),
      "/ws": { target: gateway.replace(/^http/, "ws"), ws: true },
    },
  },
});
