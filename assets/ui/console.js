// Keyward console: dialogs, confirmations and the copy button. No framework, no build step.
"use strict";
(function () {
  function fill(dialog, opener) {
    var d = opener.dataset;
    var form = dialog.querySelector("form[data-action-form]");
    if (form && d.action) form.setAttribute("action", d.action);
    dialog.querySelectorAll("[data-slot=name]").forEach(function (el) { el.textContent = d.name || ""; });
    dialog.querySelectorAll("[data-slot=back]").forEach(function (el) { el.value = d.back || ""; });
    dialog.querySelectorAll("[data-fill]").forEach(function (el) {
      var v = d[el.dataset.fill];
      el.value = v === undefined ? "" : v;
    });
    // An owner may only narrow a key: the current value is the most they may enter.
    dialog.querySelectorAll("[data-fill-max]").forEach(function (el) {
      var m = d[el.dataset.fillMax];
      if (m === undefined || m === "") el.removeAttribute("max"); else el.setAttribute("max", m);
    });
  }
  function open(dialog, opener) {
    if (opener) fill(dialog, opener);
    dialog.showModal();
    var first = dialog.querySelector("[aria-invalid=true], input:not([type=hidden]), select, textarea, button");
    if (first) first.focus();
  }
  document.addEventListener("click", function (e) {
    var t = e.target.closest("[data-open]");
    if (t) {
      var dialog = document.getElementById(t.dataset.open);
      if (dialog) { open(dialog, t); }
      return;
    }
    var c = e.target.closest("[data-close]");
    if (c) { var dlg = c.closest("dialog"); if (dlg) dlg.close(); return; }
    var copy = e.target.closest("[data-copy]");
    if (copy) {
      var input = document.querySelector(copy.dataset.copy);
      var status = copy.closest(".secret").querySelector(".copied");
      input.select();
      var done = function () { status.textContent = "Copied to the clipboard."; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(done, function () { document.execCommand("copy"); done(); });
      } else { document.execCommand("copy"); done(); }
    }
  });
  // The provider form: only the chosen kind's fields show, and its usual base URL is
  // suggested.
  function showKind(select) {
    var form = select.closest("form");
    var kind = select.value;
    form.querySelectorAll(".kind-fields").forEach(function (fs) {
      var on = fs.dataset.kind === kind;
      fs.hidden = !on;
      fs.disabled = !on;
    });
    var opt = select.selectedOptions[0];
    var url = form.querySelector("input[name=base_url]");
    if (url && opt && opt.dataset.baseUrl) url.placeholder = opt.dataset.baseUrl;
  }
  document.addEventListener("change", function (e) {
    if (e.target.matches("[data-kind-select]")) showKind(e.target);
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-kind-select]").forEach(showKind);
    document.querySelectorAll("dialog.open-on-load").forEach(function (d) { open(d, null); });
    // A fetch from this console carries the session's token too.
    var token = document.querySelector("input[name=csrf]");
    if (token && window.fetch) {
      var orig = window.fetch;
      window.fetch = function (url, opts) {
        opts = opts || {};
        if (new URL(String(url), location.href).origin === location.origin) {
          opts.headers = new Headers(opts.headers || {});
          opts.headers.set("x-csrf-token", token.value);
        }
        return orig(url, opts);
      };
    }
  });
})();
