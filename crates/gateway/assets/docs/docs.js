// Keel's API reference: Swagger UI over the gateway's own OpenAPI document.
// A file, not an inline script: the page's Content-Security-Policy allows
// scripts from the gateway only.
"use strict";

window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  // The base layout: no top bar to load other documents from.
  layout: "BaseLayout",
  // Never read settings (another document's URL) from the query string.
  queryConfigEnabled: false,
  // No call to the online validator (swagger.io) with the document.
  validatorUrl: null,
  deepLinking: true,
  docExpansion: "list",
  filter: true,
  displayRequestDuration: true,
  // The access token lives in this page's memory only, never in storage.
  persistAuthorization: false,
  tryItOutEnabled: false,
});
