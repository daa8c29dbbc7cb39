// The JSON form of a TypeScript type: a string enum becomes the union of its values (what a
// dashboard file holds); everything else keeps its shape, optional keys and exactness.
type IsAny<T> = 0 extends 1 & T ? true : false;

export type Wire<T> =
  IsAny<T> extends true
    ? T
    : T extends string
      ? string extends T
        ? string
        : `${T}`
      : T extends number | boolean | null | undefined
        ? T
        : T extends ReadonlyArray<infer U>
          ? Array<Wire<U>>
          : T extends object
            ? { [K in keyof T]: Wire<T[K]> }
            : T;
