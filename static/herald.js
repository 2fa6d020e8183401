// herald.js: the browser client (placeholder)
