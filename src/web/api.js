// api — the session with jarvas's API: logging in, the tokens (kept in
// this tab's sessionStorage, never in a URL), refreshing the access token
// before it expires and once more after a 401, and JSON errors turned
// into the server's own words.

const KEY = 'jarvas.session';
const EARLY_S = 30; // refresh this long before expiry (or at 4/5 of a short lifetime)

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The reason in a DRF-style error body: {"detail": ...} or {"field": ["..."]}.
export async function reason(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    return `The server answered ${response.status}.`;
  }
  if (body && typeof body.detail === 'string') return body.detail;
  if (body && typeof body === 'object') {
    for (const [field, errors] of Object.entries(body)) {
      if (Array.isArray(errors) && errors.length) return `${field}: ${errors.join(' ')}`;
    }
  }
  return `The server answered ${response.status}.`;
}

function claims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part.padEnd(part.length + (4 - part.length % 4) % 4, '=')));
  } catch {
    return {};
  }
}

export class Session {
  constructor(onExpired) {
    this.onExpired = onExpired;
    this.timer = null;
    this.refreshing = null;
    const saved = JSON.parse(sessionStorage.getItem(KEY) || 'null');
    this.state = saved && saved.access && saved.refresh ? saved : null;
    if (this.state) this.schedule();
  }

  get loggedIn() { return this.state !== null; }
  get username() { return this.state?.username ?? ''; }

  save(state) {
    this.state = state;
    sessionStorage.setItem(KEY, JSON.stringify(state));
    this.schedule();
  }

  async login(username, password) {
    const r = await fetch('/api/token/', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
    if (!r.ok) throw new ApiError(r.status, await reason(r));
    const tokens = await r.json();
    this.save({ username, access: tokens.access, refresh: tokens.refresh });
  }

  logout() {
    clearTimeout(this.timer);
    this.state = null;
    sessionStorage.removeItem(KEY);
  }

  // Refresh before the access token runs out, so no request meets a 401.
  schedule() {
    clearTimeout(this.timer);
    const { exp, iat } = claims(this.state.access);
    if (!exp) return;
    const now = Date.now() / 1000;
    const early = Math.min(EARLY_S, iat ? (exp - iat) / 5 : EARLY_S);
    const wait = Math.max(1, exp - early - now);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), wait * 1000);
  }

  // One refresh at a time, however many requests wait for it.
  refresh() {
    if (!this.refreshing) {
      this.refreshing = (async () => {
        const r = await fetch('/api/token/refresh/', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ refresh: this.state?.refresh ?? '' }),
        });
        if (!r.ok) {
          const why = await reason(r);
          this.logout();
          this.onExpired(why);
          throw new ApiError(r.status, why);
        }
        const { access } = await r.json();
        this.save({ ...this.state, access });
      })().finally(() => { this.refreshing = null; });
    }
    return this.refreshing;
  }

  // fetch() with the access token; a 401 refreshes it and tries once more
  // (nothing was done for a request refused at authentication).
  async fetch(path, options = {}) {
    const send = () => fetch(path, {
      ...options,
      headers: { ...(options.headers || {}), Authorization: `Bearer ${this.state?.access ?? ''}` },
    });
    let r = await send();
    if (r.status === 401 && this.state) {
      await this.refresh();
      r = await send();
    }
    return r;
  }

  // JSON of a successful answer, or an ApiError with the server's reason.
  async json(path, options) {
    const r = await this.fetch(path, options);
    if (!r.ok) throw new ApiError(r.status, await reason(r));
    return r.status === 204 ? null : r.json();
  }
}
