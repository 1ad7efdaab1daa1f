// sorted-btree is CommonJS with `exports.default`: Node's ESM loader (tsx)
// hands us the exports object, bundlers (vitest) unwrap `default`. Accept both.
import sortedBtree from "sorted-btree";

type BTreeClass = typeof sortedBtree.default;
const mod = sortedBtree as unknown as { default?: BTreeClass };
export const BTree: BTreeClass = mod.default ?? (sortedBtree as unknown as BTreeClass);
export type BTree<K, V> = InstanceType<typeof sortedBtree.default<K, V>>;
