// sorted-btree is CommonJS with a default export: under NodeNext the class is `.default`.
import sortedBtree from "sorted-btree";

export const BTree = sortedBtree.default;
export type BTree<K, V> = InstanceType<typeof sortedBtree.default<K, V>>;
