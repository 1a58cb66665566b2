// Encodes documents with the npm package gpt-3-encoder, the reference for Gpt2Tokenizer.
//   node gpt2_reference.js PACKAGE_DIR DOCS.json IDS.json
// DOCS.json: a JSON array of strings. IDS.json: a JSON array of id arrays, one per document.
// Documents are encoded one by one: the package's encode() grows its result by concatenation,
// quadratic in the length of one call.
'use strict';
const fs = require('fs');
const [packageDir, docsPath, idsPath] = process.argv.slice(2);
const { encode } = require(packageDir);
const docs = JSON.parse(fs.readFileSync(docsPath, 'utf8'));
fs.writeFileSync(idsPath, JSON.stringify(docs.map((doc) => encode(doc))));
