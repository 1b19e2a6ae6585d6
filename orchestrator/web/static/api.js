// The JSON API and the event stream, with the bearer token kept in sessionStorage.
const KEY = "fleetpush.token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Call the API; resolves to the JSON body, rejects with ApiError. */
export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token.get()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(resp.status, data.error || resp.statusText);
  return data;
}

/**
 * Read /v1/events with fetch(), so the token travels in the Authorization header and
 * never in a URL (EventSource cannot send headers). Reconnects with a growing delay.
 * onEvent(name, data) gets each event; onStatus(text) gets "live" / "reconnecting".
 * Returns a function that stops the stream.
 */
export function stream(onEvent, onStatus) {
  let stopped = false;
  let controller = null;
  let delay = 1000;

  async function once() {
    controller = new AbortController();
    const resp = await fetch("/v1/events", {
      headers: { Authorization: `Bearer ${token.get()}`, Accept: "text/event-stream" },
      signal: controller.signal, cache: "no-store",
    });
    if (!resp.ok) throw new ApiError(resp.status, "event stream refused");
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of frame.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        if (!data.length) continue;
        if (name === "hello") { delay = 1000; onStatus("live"); }
        onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
      } catch (e) {
        if (stopped) return;
        if (e instanceof ApiError && e.status === 401) { onEvent("unauthorized", {}); return; }
      }
      if (stopped) return;
      onStatus("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  })();
  return () => { stopped = true; controller?.abort(); };
}
