// The admin page: every action is an admin JSON-RPC method. After a change the sections
// are fetched again from the server (the same rendering as a reload), except the panel
// that shows a new key once.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const root = $("admin");
  if (!root) return;
  const SECTIONS = ["admin-users", "admin-passkeys", "admin-groups", "admin-sites"];

  // Replace the sections with freshly rendered ones; typed-in form values are dropped.
  async function refresh() {
    try {
      const response = await fetch("/admin", {credentials: "same-origin",
                                               headers: {Accept: "text/html"}});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const id of SECTIONS) {
        const replacement = fresh.getElementById(id);
        if (replacement) $(id).replaceWith(document.adoptNode(replacement));
      }
    } catch (e) {
      iceprod.say(`Could not refresh the page: ${e.message}; reload it`, "error");
    }
  }

  function showSecret(title, secret, details) {
    $("secret-title").textContent = title;
    $("new-key").value = secret;
    $("secret-details").textContent = details;
    $("secret-panel").hidden = false;
    $("new-key").focus();
    $("new-key").select();
  }

  async function run(label, method, params) {
    const result = await iceprod.act(label, method, params);
    if (result !== undefined) await refresh();
    return result;
  }

  const value = (id) => $(id).value.trim();

  const forms = {
    "create-user": () => run(`Create user ${value("new-user-name")}`, "create_user", {
      username: value("new-user-name"), password: $("new-user-password").value,
      role: $("new-user-role").value}),

    "issue-key": async () => {
      const params = {role: $("key-role").value, description: value("key-description")};
      if ($("key-user").value) params.username = $("key-user").value;
      if (value("key-expires")) {
        params.expires = Number(value("key-expires")) * Number($("key-expires-unit").value);
      }
      const key = await run(`Issue a ${params.role} passkey`, "issue_passkey", params);
      if (key) {
        const scope = [`role ${key.role}`, key.username ? `user ${key.username}` : "",
                       key.expires ? `expires ${iceprod.when(key.expires)}` : "no expiry"];
        showSecret("New passkey", key.passkey,
                   `Key id ${key.key_id}: ${scope.filter(Boolean).join(", ")}.`);
      }
    },

    "create-group": () => run(`Create group ${value("new-group-name")}`, "create_group", {
      name: value("new-group-name"), priority: Number(value("new-group-priority") || 0),
      description: value("new-group-description")}),

    "register-site": async () => {
      const site = await run(`Register site ${value("new-site-name")}`, "register_site", {
        name: value("new-site-name"), cert_dn: value("new-site-dn") || null});
      if (site) {
        showSecret(`Key of site ${site.name}`, site.site_key,
                   `Site id ${site.site_id}. The site authenticates with its id and this key.`);
      }
    },
  };

  const buttons = {
    "disable-user": (b) => window.confirm(`Disable ${b.dataset.user}? Their logins and passkeys stop working at once.`) &&
      run(`Disable ${b.dataset.user}`, "disable_user", {username: b.dataset.user, disabled: true}),

    "enable-user": (b) => run(`Enable ${b.dataset.user}`, "disable_user",
                              {username: b.dataset.user, disabled: false}),

    "revoke-key": (b) => window.confirm(`Revoke passkey ${b.dataset.key}? It stops working at once.`) &&
      run(`Revoke ${b.dataset.key}`, "revoke_passkey", {key_id: b.dataset.key}),

    "set-group-priority": (b) => {
      const input = b.closest("tr").querySelector(".group-priority");
      return run(`Priority of ${b.dataset.group}`, "set_group_priority",
                 {name: b.dataset.group, priority: Number(input.value)});
    },

    "set-site-dn": (b) => {
      const dn = b.closest("tr").querySelector(".site-dn").value.trim();
      return run("Set the certificate DN", "set_site_cert_dn",
                 {site: b.dataset.site, cert_dn: dn || null});
    },

    "rotate-site-key": async (b) => {
      if (!window.confirm(`Give ${b.dataset.name} a new key? Its current key stops working at once.`)) return;
      const site = await run(`Rotate the key of ${b.dataset.name}`, "rotate_site_key",
                             {site: b.dataset.site});
      if (site) showSecret(`New key of site ${site.name}`, site.site_key, `Site id ${site.site_id}.`);
    },
  };

  // events are delegated: the sections are replaced after every change
  root.addEventListener("submit", async (event) => {
    const action = forms[event.target.dataset.action];
    if (!action) return;
    event.preventDefault();
    const submit = event.target.querySelector("button[type=submit]");
    submit.disabled = true;
    try { await action(); } finally { submit.disabled = false; }
  });

  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || !buttons[button.dataset.action]) return;
    button.disabled = true;
    try { await buttons[button.dataset.action](button); } finally { button.disabled = false; }
  });

  root.addEventListener("change", async (event) => {
    const select = event.target.closest("select[data-action=set-role]");
    if (!select) return;
    const user = select.dataset.user;
    const role = select.value;
    if (role === "user" && user === root.dataset.me &&
        !window.confirm("Make yourself a plain user? You will lose this page.")) {
      select.value = "admin";
      return;
    }
    if (await run(`Role of ${user}`, "set_user_role", {username: user, role}) === undefined) {
      await refresh();  // put the select back to the role the server has
    }
  });

  $("copy-key").addEventListener("click", async () => {
    const field = $("new-key");
    try {
      await navigator.clipboard.writeText(field.value);
      iceprod.say("Copied to the clipboard", "ok");
    } catch (e) {
      // clipboard API refused (plain http): fall back to the selection
      field.select();
      const ok = document.execCommand && document.execCommand("copy");
      iceprod.say(ok ? "Copied to the clipboard" : "Select the key and copy it", ok ? "ok" : "error");
    }
  });

  $("hide-key").addEventListener("click", () => {
    $("new-key").value = "";
    $("secret-panel").hidden = true;
  });
})();
