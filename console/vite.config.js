// Builds the second-generation console into vms/console/next/, which `vms serve` serves at /console/next/.
import { fileURLToPath, URL } from "node:url";
import { defineConfig } from "vite";
import vue from "@vitejs/plugin-vue";

export default defineConfig({
  base: "/console/next/",
  plugins: [vue()],
  build: {
    outDir: fileURLToPath(new URL("../vms/console/next", import.meta.url)),
    emptyOutDir: true,
    // Chromium of Debian 12 and later; no legacy bundle (the console runs on the center's own PCs).
    target: "es2020",
    chunkSizeWarningLimit: 1500,
    // No inline <script> or data: modules: the server's Content-Security-Policy allows scripts from 'self' only.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    rollupOptions: {
      output: {
        // Libraries change less often than our pages: a separate file stays cached across releases.
        manualChunks: { vendor: ["vue", "vue-router", "element-plus", "@element-plus/icons-vue"], pinyin: ["pinyin-pro"] },
      },
    },
  },
});
