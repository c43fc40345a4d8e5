/**
 * A set that remembers at most `limit` keys: adding a key beyond the limit forgets the key that
 * was added (or seen again) longest ago. Used for the client's duplicate filters (QUE-7), so that
 * a long-lived session holds a bounded number of message ids.
 */
export class BoundedSet<T> {
  private readonly items = new Set<T>();

  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`BoundedSet limit must be a positive integer, got ${limit}`);
  }

  get size(): number {
    return this.items.size;
  }

  has(key: T): boolean {
    return this.items.has(key);
  }

  /**
   * Adds `key` (or refreshes it, so that it is forgotten last). Returns true when it was not
   * there, i.e. the key is new within the window.
   */
  add(key: T): boolean {
    const isNew = !this.items.delete(key);
    this.items.add(key);
    while (this.items.size > this.limit) {
      const oldest = this.items.values().next();
      if (oldest.done) break;
      this.items.delete(oldest.value);
    }
    return isNew;
  }

  clear(): void {
    this.items.clear();
  }
}
