// Small progressive enhancements; every page works without them.
document.addEventListener("change", (event) => {
  const el = event.target;
  if (el.matches("select[data-autosubmit]")) el.form.requestSubmit();
});
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
  // One click, one POST: disable the buttons while the page reloads.
  if (!event.defaultPrevented && form.method.toLowerCase() === "post") {
    setTimeout(() => form.querySelectorAll("button").forEach((b) => (b.disabled = true)), 0);
  }
});
