// Small helpers shared by the tests.
export const wait = (ms) => new Promise((r) => setTimeout(r, ms));

export async function until(cond, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await wait(10);
  }
}

/** Resolves with the detail of the first `type` event of `client` that satisfies `pred`. */
export function nextEvent(client, type, pred = () => true, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no "${type}" event within ${ms} ms`));
    }, ms);
    const off = client.on(type, (d) => {
      if (!pred(d)) return;
      clearTimeout(timer);
      off();
      resolve(d);
    });
  });
}

/** Collects every `type` event of `client` into an array. */
export function collect(client, type) {
  const list = [];
  client.on(type, (d) => list.push(d));
  return list;
}
