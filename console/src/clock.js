// One ticking clock for every tile's on-screen date-time (not one timer per tile).
import { ref } from "vue";
import { localText } from "./time.js";

export const nowText = ref(localText(Date.now()));
setInterval(() => { nowText.value = localText(Date.now()); }, 1000);
