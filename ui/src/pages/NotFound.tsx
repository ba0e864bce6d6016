import { Link } from "react-router";

export function NotFound() {
  return (
    <>
      <h1>Page not found</h1>
      <p>
        No page has this address. <Link to="/">Back to the projects</Link>
      </p>
    </>
  );
}
