// Starts Swagger UI on the appliance's own OpenAPI document (kept out of the HTML, so the
// page needs no inline script).
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec"),
    dom_id: "#swagger-ui",
    deepLinking: true,
  });
});
