// markdown — the model's Markdown as safe HTML.  marked renders it; any
// HTML the model wrote is shown as text, never as elements (marked's html
// tokens escaped), and DOMPurify cleans the result as a second wall: a
// reply holding <script> or <img onerror> can never run.
import { marked } from './vendor/marked.esm.js';
import DOMPurify from './vendor/purify.es.mjs';

function escape(text) {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

marked.use({
  gfm: true,
  breaks: true,
  renderer: {
    html(token) { return escape(token.text ?? token.raw ?? ''); },
  },
});

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer');
  }
});

export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text), { FORBID_TAGS: ['style', 'img', 'form', 'input'] });
}
