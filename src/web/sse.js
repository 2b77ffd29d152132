// sse — an incremental Server-Sent Events parser, as the WHATWG HTML
// standard defines the format ("Parsing an event stream"), for a stream
// read with fetch(): lines end in CRLF, LF or CR (a CR at the end of one
// chunk may pair with an LF at the start of the next); "field: value"
// with one space after the colon dropped; data lines joined with "\n";
// a blank line dispatches; a block without data dispatches nothing but
// still sets the last event id; lines starting with ":" are comments;
// retry takes only digits.  jarvas's streams use all of these.

export class SSEParser {
  // on.event({type, data, lastEventId}), on.comment(text), on.retry(ms)
  constructor(on) {
    this.on = on;
    this.buffer = '';
    this.first = true;
    this.pendingCR = false;
    this.lastEventId = '';
    this.reset();
  }

  reset() {
    this.data = '';
    this.type = '';
    this.hasData = false;
  }

  feed(text) {
    if (this.first) {
      if (text === '') return;
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.pendingCR && text.startsWith('\n')) text = text.slice(1); // the LF of a CRLF
    this.pendingCR = false;
    this.buffer += text;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== '\n' && c !== '\r') continue;
      this.line(this.buffer.slice(start, i));
      if (c === '\r') {
        if (i + 1 === this.buffer.length) this.pendingCR = true;
        else if (this.buffer[i + 1] === '\n') i++;
      }
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line[0] === ':') {
      this.on.comment?.(line.slice(1).replace(/^ /, ''));
      return;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') {
      this.data += value + '\n';
      this.hasData = true;
    } else if (field === 'event') {
      this.type = value;
    } else if (field === 'id') {
      if (!value.includes('\0')) this.lastEventId = value;
    } else if (field === 'retry') {
      if (/^[0-9]+$/.test(value)) this.on.retry?.(Number(value));
    }
  }

  dispatch() {
    if (!this.hasData) {
      this.reset();
      return;
    }
    const event = { type: this.type || 'message', data: this.data.slice(0, -1),
      lastEventId: this.lastEventId };
    this.reset();
    this.on.event?.(event);
  }
}
