// The hubbub browser client is being written.
export {};
