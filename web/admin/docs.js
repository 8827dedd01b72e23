// The interactive view of /openapi.json (served by this server; nothing from elsewhere).
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger" });
