"""HTTP: the routes, what they share, and the OpenAPI description. Routes parse, call one session
function, and render what it returns."""
