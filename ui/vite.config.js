import { defineConfig } from "vite";

// Built assets ship inside the Python package (meshd.agent.ui_dist): no build step for users.
export default defineConfig({
  base: "/ui/",
  build: { outDir: "../agent/ui_dist", emptyOutDir: true, chunkSizeWarningLimit: 1024 },
});
