// A Server-Sent Events reader for gateway tests: records every event of `/v1/subscribe`.
export interface SseEvent {
  event: string;
  data: { type: string; changes?: { actor: string; key: string; seq: number; state: unknown }[] };
}

export interface SseStream {
  readonly status: number;
  readonly events: SseEvent[];
  close(): Promise<void>;
}

export async function openSse(url: string, headers: Record<string, string> = {}): Promise<SseStream> {
  const ac = new AbortController();
  const res = await fetch(url, { signal: ac.signal, headers });
  const events: SseEvent[] = [];
  if (!res.ok || !res.body) return { status: res.status, events, close: async () => ac.abort() };
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  const pump = (async () => {
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event && data) events.push({ event, data: JSON.parse(data) as SseEvent['data'] });
      }
    }
  })();
  return {
    status: res.status,
    events,
    async close() {
      ac.abort();
      await pump;
    },
  };
}
